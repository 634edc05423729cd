//! `emq_recon`, as Midge means it: a node's runtime diagnostics on request, for an operator asking
//! where the memory went or which client is falling behind. Nothing here runs unless asked.

use std::sync::atomic::Ordering;

use midge_shared::control::{Recon, ReconConnections, ReconMemory, ReconRuntime};

use super::{sys, Node};
use crate::metrics::{Stat, CONNECTION_TASK_BYTES};

/// The diagnostics, with the `top` clients by queue.
pub fn report(node: &Node, top: usize) -> Recon {
    let (rss, virtual_bytes) = process_memory();
    let heap = allocator_heap();
    let metrics = tokio::runtime::Handle::current().metrics();
    let count = node.stats.count(Stat::Clients);
    let (queues, top_queues) = node.router.queue_report(top);
    Recon {
        memory: ReconMemory {
            rss_bytes: rss,
            virtual_bytes,
            heap_in_use_bytes: heap.as_ref().map(|h| h.used),
            heap_free_bytes: heap.as_ref().map(|h| h.allocated.saturating_sub(h.used)),
            heap_total_bytes: heap.as_ref().map(|h| h.allocated),
        },
        runtime: ReconRuntime {
            workers: metrics.num_workers() as u64,
            tasks: metrics.num_alive_tasks() as u64,
            global_queue_depth: metrics.global_queue_depth() as u64,
        },
        connections: ReconConnections {
            count,
            task_bytes: CONNECTION_TASK_BYTES.load(Ordering::Relaxed) as u64,
            dormant: node.dormitory.sleeping() as u64,
            estimated_bytes_each: (count > 0).then(|| rss.saturating_sub(node.baseline_rss) / count),
        },
        queues,
        top_queues,
    }
}

/// The allocator's own account, where it keeps one.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn allocator_heap() -> Option<sys::Heap> {
    Some(sys::heap())
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn allocator_heap() -> Option<sys::Heap> {
    None
}

/// `(resident, virtual)` bytes of this process, from `/proc/self/status` (zero where there is none).
pub fn process_memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kilobytes = |field: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (kilobytes("VmRSS:"), kilobytes("VmSize:"))
}
