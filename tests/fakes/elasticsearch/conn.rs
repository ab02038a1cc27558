//! Connections the fake can cut: a listener whose streams fail as soon as
//! their handle is pulled (a dropped connection) or the fake shuts down, so a
//! client sees the socket close without an answer.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

/// Cuts the connection a request came on (a handler's `ConnectInfo`).
#[derive(Clone, Debug)]
pub(super) struct ConnHandle(Arc<Notify>);

impl ConnHandle {
    /// Closes the connection instead of sending the answer being prepared.
    pub fn cut(&self) {
        self.0.notify_one();
    }
}

impl Connected<IncomingStream<'_, CuttableListener>> for ConnHandle {
    fn connect_info(stream: IncomingStream<'_, CuttableListener>) -> Self {
        stream.io().handle.clone()
    }
}

pub(super) struct CuttableListener {
    pub inner: TcpListener,
    pub shutdown: watch::Receiver<bool>,
}

impl Listener for CuttableListener {
    type Io = CuttableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (CuttableStream, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let handle = ConnHandle(Arc::new(Notify::new()));
                    let cut = handle.0.clone();
                    let mut shutdown = self.shutdown.clone();
                    let closed = Box::pin(async move {
                        tokio::select! {
                            () = cut.notified() => {}
                            _ = shutdown.wait_for(|down| *down) => {}
                        }
                    });
                    let stream = CuttableStream {
                        stream,
                        handle,
                        closed,
                        cut: false,
                    };
                    return (stream, addr);
                }
                // Out of file descriptors and the like: wait, as axum does.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

pub(super) struct CuttableStream {
    stream: TcpStream,
    handle: ConnHandle,
    /// Ready once the connection is to be cut.
    closed: Pin<Box<dyn Future<Output = ()> + Send>>,
    cut: bool,
}

impl CuttableStream {
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.cut && self.closed.as_mut().poll(cx).is_ready() {
            self.cut = true;
        }
        if self.cut {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "cut by the fake",
            ));
        }
        Ok(())
    }
}

impl AsyncRead for CuttableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CuttableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
