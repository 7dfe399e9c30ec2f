//! The `ferroserve` binary as a script would use it.

use std::process::Command;

fn ferroserve() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferroserve"))
}

#[test]
fn help_lists_the_commands() {
    let out = ferroserve().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("routes"), "{text}");
}

#[test]
fn routes_without_a_server_is_a_clear_error_with_exit_code_2() {
    // Bind then drop a listener to get a port where nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = ferroserve()
        .args(["routes", "--address", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with(&format!("error: no ferroserve server at 127.0.0.1:{port}")),
        "{err}"
    );
}

struct Hello;

impl ferroserve::Ingress for Hello {
    type Output = &'static str;
    async fn call(&self, _request: ferroserve::Request) -> &'static str {
        "hello"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_prints_health_and_the_route_table_of_a_running_server() {
    let app = ferroserve::Application::new(ferroserve::Deployment::new("Hello").bind(|| Hello))
        .name("hello")
        .route_prefix("/hello");
    let server = ferroserve::Serve::new()
        .app(app)
        .host("127.0.0.1")
        .port(0)
        .start()
        .await
        .unwrap();
    let address = server.local_addr().to_string();
    let out = tokio::task::spawn_blocking(move || {
        ferroserve()
            .args(["routes", "--address", &address])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "health: success\nroutes: {\"/hello\":\"hello\"}\n"
    );
    server.shutdown().await;
}
