//! The X-Forwarded-For walk allocates nothing (`proxy::client_addr`): counted with a global
//! allocator that tallies the allocations of the calling thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::IpAddr;

use wsingress::proxy::client_addr::TrustedProxies;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is a
// const-initialised thread-local `Cell` (no allocation, no destructor).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn the_forwarded_for_walk_allocates_nothing() {
    let trusted = TrustedProxies::parse(&["10.0.0.0/8".into(), "fd00::/8".into(), "::ffff:192.168.0.0/112".into()])
        .expect("valid list");
    let peer: IpAddr = "10.0.0.5".parse().unwrap();
    let long = format!("{}, 203.0.113.9", vec!["10.1.2.3"; 50].join(", "));
    let cases: [&[&[u8]]; 7] = [
        &[],
        &[b"203.0.113.9"],
        &[b"6.6.6.6, 203.0.113.9, 10.9.9.9, 192.168.3.4"],
        &[b"6.6.6.6", b"198.51.100.7:5555"],
        &[b"6.6.6.6, [2001:db8::7]:443, fd00::1"],
        &[b"6.6.6.6, unknown, , 10.0.0.7"],
        &[long.as_bytes()],
    ];
    let mut clients = Vec::with_capacity(cases.len());
    // The counter sees this thread's allocations.
    let probe = allocations();
    std::hint::black_box(Vec::<u8>::with_capacity(8));
    assert_eq!(allocations(), probe + 1);
    let before = allocations();
    for lines in cases {
        clients.push(trusted.resolve(peer, lines.iter().copied()).client);
    }
    let during = allocations() - before;
    assert_eq!(during, 0, "the walk allocated {during} times");
    // The walks really ran (and gave what the unit tests expect).
    let want: Vec<IpAddr> =
        ["10.0.0.5", "203.0.113.9", "203.0.113.9", "198.51.100.7", "2001:db8::7", "10.0.0.7", "203.0.113.9"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
    assert_eq!(clients, want);
}
