//! spanlens-loadgen: the fixtures builder shared by spanlens's tests, benches and examples
//! ([`fixtures`]), and the load generator binary of the same name (`spanlens-loadgen --help`,
//! BENCHMARKS.md) that sends its requests to a running spanlens.

pub mod fixtures;
