//! Free loopback ports for the servers the tests start.

/// A loopback port that was free a moment ago (bind `127.0.0.1:0`, read the port, close). Never 6379.
/// Racy by nature: callers that hand it to another process must retry if that process fails to bind.
pub fn free_port() -> u16 {
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        if port != 6379 {
            return port;
        }
    }
}
