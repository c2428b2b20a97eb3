fn main() { println!("xtask: under construction"); }
