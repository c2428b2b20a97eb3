//! tracer: explains, from inside the kernel, why Nginx answers 502 Bad Gateway.
#![allow(dead_code)]

mod capture;
mod enrich;
mod event;
mod explain;
mod kernel;
mod report;

fn main() {
    println!("tracer: under construction");
}
