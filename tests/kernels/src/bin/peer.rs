//! `peer`: the other domain of the inter-domain benchmarks (`bench` builds it from its
//! initrd module on Ferrovisor). It reports the TSC at its first instruction, binds the
//! port dom0 offers, grants dom0 a page, and then answers every event with one back,
//! forever: dom0 destroys it when done.
#![cfg_attr(target_os = "none", no_std, no_main)]

use ferrovisor_abi::xen::{
    event_channel::{EvtchnBindInterdomain, EvtchnOp},
    xen::StartInfo,
};
use pvrt::{events, region, xenstore::Store};

pvrt::test_kernel!(name: "peer", main: peer_main);

/// The reference of the page it grants dom0.
const GREF: u32 = 8;

fn peer_main(si: &StartInfo) -> Result<(), &'static str> {
    let entry = pvrt::entry_tsc();
    pvrt::shared_info::map(si).map_err(|_| "cannot map shared_info")?;
    let mut store = Store::open(si).ok_or("no xenstore ring")?;
    let mut buf = [0u8; 20];
    store
        .write("data/entry-tsc", pvrt::decimal(entry, &mut buf).as_bytes())
        .map_err(|_| "cannot write data/entry-tsc")?;
    let mut raw = [0u8; 20];
    let n = store
        .read("data/dom0-port", &mut raw)
        .map_err(|_| "no data/dom0-port")?;
    let remote = pvrt::parse_decimal(&raw[..n])
        .and_then(|v| u32::try_from(v).ok())
        .ok_or("data/dom0-port is not a number")?;
    let mut b = EvtchnBindInterdomain {
        remote_dom: 0,
        _cpad0: 0,
        remote_port: remote,
        local_port: 0,
    };
    // SAFETY: the hypervisor reads and writes the structure on this stack.
    let r = unsafe { events::event_channel_op(EvtchnOp::BindInterdomain, (&raw mut b).cast()) };
    pvrt::ensure!(r == 0, "binding dom0's port returned {r}");
    let port = b.local_port;
    events::set_masked(port, true);
    events::clear_pending(port);

    let table = pvrt::grant::GrantTable::setup(si)?;
    let page = region::alloc_scratch(si).ok_or("no scratch page to grant")?;
    table.grant(GREF, 0, &page, false);
    store
        .write("data/ready", b"1")
        .map_err(|_| "cannot write data/ready")?;
    loop {
        pvrt::sched_poll(port, 0);
        if events::is_pending(port) {
            events::clear_pending(port);
            events::send(port);
        }
    }
}
