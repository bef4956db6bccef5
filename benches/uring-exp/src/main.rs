//! Issue #11 experiment: does io_uring batching move the proxy's per-message CPU below what
//! epoll allows? Two byte relays with the same job (accept, connect to one backend, copy both
//! ways, close both when either side ends), one thread each, measured with wsbench pingpong
//! through them: `epoll` is tokio's current-thread runtime (the runtime wsingress uses), `uring`
//! is one io_uring ring driving accept, connect, recv and send with one `io_uring_enter` per
//! batch of completions. Neither parses WebSocket frames, so both are lower bounds for a relay.
//!
//!   uring-exp epoll LISTEN BACKEND
//!   uring-exp uring LISTEN BACKEND

use std::net::SocketAddr;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: uring-exp epoll|uring LISTEN BACKEND");
        std::process::exit(64);
    }
    let listen: SocketAddr = args[2].parse().unwrap_or_else(|e| fail(&format!("listen: {e}")));
    let backend: SocketAddr = args[3].parse().unwrap_or_else(|e| fail(&format!("backend: {e}")));
    let result = match args[1].as_str() {
        "epoll" => epoll::run(listen, backend),
        "uring" => uring::run(listen, backend),
        other => fail(&format!("unknown mode {other}")),
    };
    if let Err(e) = result {
        fail(&e.to_string());
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("uring-exp: {msg}");
    std::process::exit(1)
}

mod epoll {
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    pub fn run(listen: SocketAddr, backend: SocketAddr) -> std::io::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let listener = TcpListener::bind(listen).await?;
            eprintln!("epoll relay on {listen} -> {backend}");
            loop {
                let (client, _) = listener.accept().await?;
                tokio::spawn(async move {
                    let Ok(upstream) = TcpStream::connect(backend).await else { return };
                    let _ = client.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    let (mut cr, mut cw) = client.into_split();
                    let (mut ur, mut uw) = upstream.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = cr.read(&mut buf).await {
                            if n == 0 || uw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = uw.shutdown().await;
                    };
                    let down = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = ur.read(&mut buf).await {
                            if n == 0 || cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        })
    }
}

mod uring {
    use io_uring::{opcode, types, IoUring};
    use std::net::{SocketAddr, SocketAddrV4, TcpListener};
    use std::os::fd::{AsRawFd, RawFd};

    const BUF: usize = 16 * 1024;
    // user_data = slot << 3 | op
    const OP_ACCEPT: u64 = 0;
    const OP_CONNECT: u64 = 1;
    const OP_RECV_C: u64 = 2; // from the client
    const OP_RECV_U: u64 = 3; // from the upstream
    const OP_SEND_U: u64 = 4; // to the upstream (bytes from the client)
    const OP_SEND_C: u64 = 5; // to the client

    struct Pair {
        client: RawFd,
        upstream: RawFd,
        up_buf: Box<[u8]>,   // client -> upstream
        down_buf: Box<[u8]>, // upstream -> client
        up_len: usize,
        up_sent: usize,
        down_len: usize,
        down_sent: usize,
        inflight: u32,
        closing: bool,
    }

    fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(addr.ip().octets()) },
            sin_zero: [0; 8],
        }
    }

    fn nodelay(fd: RawFd) {
        let one: libc::c_int = 1;
        // SAFETY: fd is a TCP socket we own; the option value outlives the call.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }

    pub fn run(listen: SocketAddr, backend: SocketAddr) -> std::io::Result<()> {
        let SocketAddr::V4(backend) = backend else {
            return Err(std::io::Error::other("IPv4 backend only"));
        };
        let listener = TcpListener::bind(listen)?;
        let lfd = listener.as_raw_fd();
        let target = sockaddr(backend);
        let mut ring = IoUring::new(4096)?;
        let mut pairs: Vec<Option<Pair>> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        eprintln!("uring relay on {listen} -> {backend}");

        let push = |ring: &mut IoUring, e: io_uring::squeue::Entry| {
            // SAFETY: every buffer and address an entry points at lives in `pairs` (boxed, not
            // moved while the entry is in flight) or in `target`, which outlives the ring loop.
            while unsafe { ring.submission().push(&e) }.is_err() {
                let _ = ring.submit();
            }
        };
        push(
            &mut ring,
            opcode::Accept::new(types::Fd(lfd), std::ptr::null_mut(), std::ptr::null_mut())
                .build()
                .user_data(OP_ACCEPT),
        );

        loop {
            ring.submit_and_wait(1)?;
            let done: Vec<(u64, i32)> = ring.completion().map(|c| (c.user_data(), c.result())).collect();
            for (ud, res) in done {
                let op = ud & 7;
                let slot = (ud >> 3) as usize;
                if op == OP_ACCEPT {
                    push(
                        &mut ring,
                        opcode::Accept::new(types::Fd(lfd), std::ptr::null_mut(), std::ptr::null_mut())
                            .build()
                            .user_data(OP_ACCEPT),
                    );
                    if res < 0 {
                        continue;
                    }
                    let client = res;
                    // SAFETY: plain socket(2) call.
                    let upstream = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
                    if upstream < 0 {
                        // SAFETY: closing the fd we were handed.
                        unsafe { libc::close(client) };
                        continue;
                    }
                    nodelay(client);
                    nodelay(upstream);
                    let pair = Pair {
                        client,
                        upstream,
                        up_buf: vec![0; BUF].into_boxed_slice(),
                        down_buf: vec![0; BUF].into_boxed_slice(),
                        up_len: 0,
                        up_sent: 0,
                        down_len: 0,
                        down_sent: 0,
                        inflight: 1,
                        closing: false,
                    };
                    let idx = match free.pop() {
                        Some(i) => {
                            pairs[i] = Some(pair);
                            i
                        }
                        None => {
                            pairs.push(Some(pair));
                            pairs.len() - 1
                        }
                    };
                    let e = opcode::Connect::new(
                        types::Fd(upstream),
                        &target as *const libc::sockaddr_in as *const libc::sockaddr,
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                    .build()
                    .user_data((idx as u64) << 3 | OP_CONNECT);
                    push(&mut ring, e);
                    continue;
                }
                let Some(p) = pairs.get_mut(slot).and_then(|p| p.as_mut()) else { continue };
                p.inflight -= 1;
                let mut next: Vec<io_uring::squeue::Entry> = Vec::new();
                if res < 0 || p.closing || ((op == OP_RECV_C || op == OP_RECV_U) && res == 0) {
                    if !p.closing {
                        p.closing = true;
                        // Wake any recv still in flight on the other side.
                        // SAFETY: shutting down fds we own.
                        unsafe {
                            libc::shutdown(p.client, libc::SHUT_RDWR);
                            libc::shutdown(p.upstream, libc::SHUT_RDWR);
                        }
                    }
                } else {
                    let base = (slot as u64) << 3;
                    match op {
                        OP_CONNECT => {
                            next.push(
                                opcode::Recv::new(types::Fd(p.client), p.up_buf.as_mut_ptr(), BUF as u32)
                                    .build()
                                    .user_data(base | OP_RECV_C),
                            );
                            next.push(
                                opcode::Recv::new(types::Fd(p.upstream), p.down_buf.as_mut_ptr(), BUF as u32)
                                    .build()
                                    .user_data(base | OP_RECV_U),
                            );
                        }
                        OP_RECV_C => {
                            p.up_len = res as usize;
                            p.up_sent = 0;
                            next.push(
                                opcode::Send::new(types::Fd(p.upstream), p.up_buf.as_ptr(), p.up_len as u32)
                                    .build()
                                    .user_data(base | OP_SEND_U),
                            );
                        }
                        OP_RECV_U => {
                            p.down_len = res as usize;
                            p.down_sent = 0;
                            next.push(
                                opcode::Send::new(types::Fd(p.client), p.down_buf.as_ptr(), p.down_len as u32)
                                    .build()
                                    .user_data(base | OP_SEND_C),
                            );
                        }
                        OP_SEND_U => {
                            p.up_sent += res as usize;
                            if p.up_sent < p.up_len {
                                // SAFETY: offset stays inside the boxed buffer.
                                let ptr = unsafe { p.up_buf.as_ptr().add(p.up_sent) };
                                next.push(
                                    opcode::Send::new(types::Fd(p.upstream), ptr, (p.up_len - p.up_sent) as u32)
                                        .build()
                                        .user_data(base | OP_SEND_U),
                                );
                            } else {
                                next.push(
                                    opcode::Recv::new(types::Fd(p.client), p.up_buf.as_mut_ptr(), BUF as u32)
                                        .build()
                                        .user_data(base | OP_RECV_C),
                                );
                            }
                        }
                        OP_SEND_C => {
                            p.down_sent += res as usize;
                            if p.down_sent < p.down_len {
                                // SAFETY: offset stays inside the boxed buffer.
                                let ptr = unsafe { p.down_buf.as_ptr().add(p.down_sent) };
                                next.push(
                                    opcode::Send::new(types::Fd(p.client), ptr, (p.down_len - p.down_sent) as u32)
                                        .build()
                                        .user_data(base | OP_SEND_C),
                                );
                            } else {
                                next.push(
                                    opcode::Recv::new(types::Fd(p.upstream), p.down_buf.as_mut_ptr(), BUF as u32)
                                        .build()
                                        .user_data(base | OP_RECV_U),
                                );
                            }
                        }
                        _ => {}
                    }
                }
                p.inflight += next.len() as u32;
                let finished = p.closing && p.inflight == 0;
                for e in next {
                    push(&mut ring, e);
                }
                if finished {
                    if let Some(p) = pairs[slot].take() {
                        // SAFETY: no entry refers to these fds or buffers any more.
                        unsafe {
                            libc::close(p.client);
                            libc::close(p.upstream);
                        }
                    }
                    free.push(slot);
                }
            }
        }
    }
}
