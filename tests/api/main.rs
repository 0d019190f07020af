//! Integration tests: the real daemon on port 0, the real local RabbitMQ, real sockets.

mod support;

mod bridge;
mod browser;
mod dead_letters;
mod faults;
mod http_basics;
mod node_compat;
mod operations;
mod pages;
mod polling;
mod sockets;
mod startup;
mod tokens;
