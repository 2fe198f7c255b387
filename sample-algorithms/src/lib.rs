//! What the sample algorithms share: the HTTP/1.1 server of the inference contract
//! (`serve`: port 8080 on every interface, `GET /ping`, `POST /invocations`).

pub mod http;
