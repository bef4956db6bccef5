// Validate Gateway API objects against the standard-channel CRD schemas, as compiled into
// validators by the npm package @kubernetes-models/gateway-api (scripts/install-tools.sh puts
// it under .tools/gateway-models). Reads a JSON array of [label, object] pairs on stdin; prints
// one line per object: "ok    LABEL" or "FAIL  LABEL: why". Exit 1 on any failure.
//   node tests/k8s-schemas/gateway-validate.mjs MODELS_DIR < objects.json
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const models = process.argv[2];
const KINDS = {
  "gateway.networking.k8s.io/v1": ["GatewayClass", "Gateway", "HTTPRoute"],
  "gateway.networking.k8s.io/v1beta1": ["ReferenceGrant"],
};
const pairs = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const [label, obj] of pairs) {
  const version = obj.apiVersion.split("/")[1];
  if (!(KINDS[obj.apiVersion] || []).includes(obj.kind)) {
    console.log(`FAIL  ${label}: ${obj.apiVersion} ${obj.kind} is not a standard-channel kind wsingress reads`);
    failed++;
    continue;
  }
  const file = join(models, "node_modules/@kubernetes-models/gateway-api/gateway.networking.k8s.io", version, `${obj.kind}.js`);
  const mod = await import(pathToFileURL(file).href);
  try {
    new mod[obj.kind](obj).validate();
    console.log(`ok    ${label} against @kubernetes-models/gateway-api`);
  } catch (e) {
    console.log(`FAIL  ${label}: ${e.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
