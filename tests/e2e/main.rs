//! End-to-end tests: the real `smlocal` binary against the real Docker Engine and a real
//! S3-compatible server on 127.0.0.1. One test binary, so the images and the server are
//! prepared once.

mod browser;
mod builtins;
mod cache;
mod check;
mod clients;
mod console;
mod contract;
mod distributed;
mod harness;
mod hostile;
mod hosting;
mod outcomes;
mod packaging;
mod pipe;
mod s3_server;
mod scale;
mod serve;
mod staging;
mod story;
mod toolkit;
mod transform;
mod tuning;
mod validation;
