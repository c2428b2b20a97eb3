//! Userspace measurements: listeners and queues via sock_diag (in each netns), owners via
//! /proc, ListenOverflows. (To be written.)
