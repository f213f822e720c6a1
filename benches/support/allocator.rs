//! The allocator the spanlens binary runs on (src/main.rs), so that the benches measure
//! what ships: jemalloc, chosen in BENCHMARKS.md "Allocator and gzip back end".

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
