//! Every `wsingress.io/*` annotation: key, parser, validation, default and documentation.
