//! A TCP proxy the chaos suite controls: it forwards, or slows every chunk,
//! or turns half-open (accepts, takes bytes, never answers), or cuts every
//! connection (a FIN) or resets it (a RST, mid-response as likely as not),
//! and refuses new ones the same way while the fault lasts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Every chunk waits this long before it is forwarded.
    Slow(Duration),
    /// Connections stay open, nothing is forwarded; at the end they are reset.
    HalfOpen,
    /// Every connection is closed, new ones at once.
    Cut,
    /// Every connection is reset, new ones at once.
    Reset,
}

pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<(Mode, u64)>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy on 127.0.0.1 to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let addr = listener.local_addr().unwrap();
        let (mode, watching) = watch::channel((Mode::Pass, 0));
        let watching = Arc::new(watching);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let watching = (*watching).clone();
                tokio::spawn(async move {
                    let _ = relay(client, target, watching).await;
                });
            }
        });
        Proxy { addr, mode, task }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_modify(|(now, generation)| {
            // Leaving half-open resets what it held, as a peer that vanished.
            if *now == Mode::HalfOpen || matches!(mode, Mode::Cut | Mode::Reset) {
                *generation += 1;
            }
            *now = mode;
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Closes both ends: with a RST when `reset` (SO_LINGER 0 sends one at
/// once, never blocking), with a FIN otherwise.
fn close(streams: &[&TcpStream], reset: bool) {
    if reset {
        for stream in streams {
            #[allow(deprecated)]
            let _ = stream.set_linger(Some(Duration::ZERO));
        }
    }
}

async fn relay(
    mut client: TcpStream,
    target: SocketAddr,
    mut watching: watch::Receiver<(Mode, u64)>,
) -> std::io::Result<()> {
    let (mode, generation) = *watching.borrow_and_update();
    match mode {
        Mode::Cut | Mode::Reset => {
            close(&[&client], mode == Mode::Reset);
            return Ok(());
        }
        Mode::HalfOpen => {
            // Takes what comes, answers nothing, until the fault ends.
            let mut sink = [0u8; 4096];
            loop {
                tokio::select! {
                    read = client.read(&mut sink) => if read? == 0 { return Ok(()) },
                    _ = watching.changed() => {
                        close(&[&client], true);
                        return Ok(());
                    }
                }
            }
        }
        Mode::Pass | Mode::Slow(_) => {}
    }
    let mut server = TcpStream::connect(target).await?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut up, mut down) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        // Which way a chunk goes, and its length.
        let (to_server, n) = tokio::select! {
            read = client.read(&mut up) => (true, read?),
            read = server.read(&mut down) => (false, read?),
            changed = watching.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let (mode, now) = *watching.borrow_and_update();
                if now != generation {
                    close(&[&client, &server], mode != Mode::Cut);
                    return Ok(());
                }
                continue;
            }
        };
        if n == 0 {
            return Ok(());
        }
        // Half-open or slow now: the chunk waits, or never goes.
        loop {
            let (mode, now) = *watching.borrow();
            if now != generation {
                close(&[&client, &server], mode != Mode::Cut);
                return Ok(());
            }
            match mode {
                Mode::HalfOpen => {
                    if watching.changed().await.is_err() {
                        return Ok(());
                    }
                }
                Mode::Slow(delay) => {
                    tokio::time::sleep(delay).await;
                    break;
                }
                _ => break,
            }
        }
        let (to, chunk) = if to_server {
            (&mut server, &up[..n])
        } else {
            (&mut client, &down[..n])
        };
        to.write_all(chunk).await?;
    }
}
