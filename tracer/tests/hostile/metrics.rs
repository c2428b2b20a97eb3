//! See ../hostile.rs.
#[allow(unused_imports)]
use crate::common::*;
