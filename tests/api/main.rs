//! Integration tests: the real daemon on port 0, the real local RabbitMQ, real sockets.

mod support;

mod adversarial;
mod bridge;
mod brokers;
mod browser;
mod cluster;
mod dead_letters;
mod faults;
mod http_basics;
mod node_compat;
mod observability;
mod operations;
mod pages;
mod payload_schema;
mod polling;
mod publishing;
mod python_compat;
mod replay;
mod sockets;
mod startup;
mod stats;
mod stream;
mod tokens;
