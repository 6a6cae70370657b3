//! The real server in this test process for the Pub/Sub client tests: port-0 HTTP and gRPC
//! listeners, a temporary data directory, anonymous Pub/Sub access (as clients in emulator mode
//! need), stopped and awaited by `stop`.

use std::time::Duration;

pub struct Server {
    pub grpc: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    pub async fn start(admin_token: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let config = ferrocore::server::Config {
            data_dir: dir.path().join("data"),
            admin_token: Some(admin_token.into()),
            activity_flush_interval: Duration::from_millis(200),
            pubsub_anonymous: true,
            ..Default::default()
        };
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr = grpc.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let listeners = ferrocore::server::Listeners { http, grpc: Some(grpc), mqtts: None, mqtt: None };
        let task = tokio::spawn(ferrocore::server::run(
            config,
            listeners,
            async move {
                let _ = stopped.await;
            },
            move |_| {
                let _ = ready_tx.send(());
            },
        ));
        tokio::time::timeout(Duration::from_secs(20), ready_rx).await.expect("the server starts").unwrap();
        Server { grpc: grpc_addr, stop: Some(stop), task, _dir: dir }
    }

    /// Stops the server and waits until it has shut down cleanly.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }
}
