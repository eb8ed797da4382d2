//! The `*.localhost` URL of a service behind the proxy.

/// The URL of a service (with a port) behind the proxy on `proxy`.
pub fn url(project: &str, service: &str, proxy: u16) -> String {
    let host = format!(
        "{}.{}.localhost",
        service.to_ascii_lowercase(),
        project.to_ascii_lowercase()
    );
    if proxy == 80 {
        format!("http://{host}/")
    } else {
        format!("http://{host}:{proxy}/")
    }
}
