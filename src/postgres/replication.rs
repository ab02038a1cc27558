//! A logical replication connection (`replication=database`), spoken directly
//! over the frontend/backend protocol: startup with trust, cleartext, md5 or
//! SCRAM-SHA-256 authentication, optional TLS, simple queries,
//! `START_REPLICATION … LOGICAL`, XLogData and keepalive messages, and standby
//! status updates.
//!
//! tokio-postgres has no replication protocol; it is used for ordinary SQL only.

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::Host;

use super::conninfo::{ConnInfo, SESSION_OPTIONS};
use super::tls::SslMode;
use crate::error::{Error, ErrorKind, Result};
use crate::lsn::Lsn;

/// Microseconds between the Unix epoch and the Postgres epoch (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// One event of the replication stream.
#[derive(Debug, Clone)]
pub enum ReplicationEvent {
    /// A pgoutput message and the WAL range it came from.
    XLogData { start: Lsn, end: Lsn, data: Bytes },
    /// The server's current WAL end; it may ask for an immediate status reply.
    Keepalive { wal_end: Lsn, reply_requested: bool },
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Reads are done in chunks of at least this size.
const READ_CHUNK: usize = 256 * 1024;
/// The longest message a server sends: Postgres builds none above
/// `MaxAllocSize` (1 GiB), plus the headers around a WAL record. A longer
/// length in a header is a broken stream, and reading it would reserve up to
/// 4 GiB of memory first.
const MAX_MESSAGE_BYTES: u32 = (1 << 30) + 1024;

/// A connection in replication mode.
pub struct ReplicationConnection {
    stream: Stream,
    read_buf: BytesMut,
    write_buf: BytesMut,
    server_params: HashMap<String, String>,
    streaming: bool,
}

impl ReplicationConnection {
    /// Connects and authenticates.
    pub async fn connect(info: &ConnInfo) -> Result<ReplicationConnection> {
        let timeout = info
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(10));
        tokio::time::timeout(timeout, Self::connect_inner(info))
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Connection,
                    format!("connecting to {info} timed out after {timeout:?}"),
                )
            })?
    }

    async fn connect_inner(info: &ConnInfo) -> Result<ReplicationConnection> {
        let conn_err = |e: std::io::Error| {
            Error::new(
                ErrorKind::Connection,
                format!("cannot connect to {info}: {e}"),
            )
            .hint("check that Postgres runs at that address and accepts connections")
        };
        let stream = match info.host() {
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{}", info.port()));
                Stream::Unix(UnixStream::connect(&path).await.map_err(conn_err)?)
            }
            Host::Tcp(host) => {
                let tcp = TcpStream::connect((host.as_str(), info.port()))
                    .await
                    .map_err(conn_err)?;
                tcp.set_nodelay(true).map_err(conn_err)?;
                if info.ssl_mode == SslMode::Disable {
                    Stream::Tcp(tcp)
                } else {
                    Self::negotiate_tls(tcp, &host, info).await?
                }
            }
        };
        let mut conn = ReplicationConnection {
            stream,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::with_capacity(1024),
            server_params: HashMap::new(),
            streaming: false,
        };
        conn.startup(info).await?;
        Ok(conn)
    }

    async fn negotiate_tls(mut tcp: TcpStream, host: &str, info: &ConnInfo) -> Result<Stream> {
        let io_err = |e: std::io::Error| {
            Error::new(
                ErrorKind::Connection,
                format!("TLS negotiation with {info} failed: {e}"),
            )
        };
        let mut buf = BytesMut::new();
        frontend::ssl_request(&mut buf);
        tcp.write_all(&buf).await.map_err(io_err)?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await.map_err(io_err)?;
        match answer[0] {
            b'S' => {
                let config = info.tls_config()?;
                let connector = tokio_rustls::TlsConnector::from(config);
                let name =
                    rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| {
                        Error::new(
                            ErrorKind::Config,
                            format!("`{host}` is not a valid TLS server name: {e}"),
                        )
                    })?;
                let tls = connector.connect(name, tcp).await.map_err(|e| {
                    Error::new(
                        ErrorKind::Connection,
                        format!("TLS handshake with {info} failed: {e}"),
                    )
                    .hint("check sslmode and sslrootcert")
                })?;
                Ok(Stream::Tls(Box::new(tls)))
            }
            b'N' if info.ssl_mode == SslMode::Prefer => Ok(Stream::Tcp(tcp)),
            b'N' => Err(Error::new(
                ErrorKind::Setup,
                format!("{info} does not accept TLS but sslmode requires it"),
            )
            .hint("enable ssl on the server or use sslmode=prefer/disable")),
            other => Err(Error::protocol(format!(
                "unexpected answer {other:#x} to the TLS request"
            ))),
        }
    }

    async fn startup(&mut self, info: &ConnInfo) -> Result<()> {
        let user = info.user();
        let dbname = info.dbname();
        let params = [
            ("user", user.as_str()),
            ("database", dbname.as_str()),
            ("replication", "database"),
            (
                "application_name",
                info.config.get_application_name().unwrap_or("sluice"),
            ),
            ("options", SESSION_OPTIONS),
            ("client_encoding", "UTF8"),
        ];
        frontend::startup_message(params.iter().copied(), &mut self.write_buf)
            .map_err(|e| Error::protocol(e.to_string()))?;
        self.flush().await?;
        let password = info.config.get_password().map(<[u8]>::to_vec);
        let no_password = || {
            Error::new(
                ErrorKind::Config,
                format!("the server asks a password for {user} and none is configured"),
            )
            .hint("put it in the database URL or in the variable named by source.password_env")
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.read_message().await? {
                backend::Message::AuthenticationOk => {}
                backend::Message::AuthenticationCleartextPassword => {
                    let password = password.as_deref().ok_or_else(no_password)?;
                    frontend::password_message(password, &mut self.write_buf)
                        .map_err(|e| Error::protocol(e.to_string()))?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let password = password.as_deref().ok_or_else(no_password)?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        user.as_bytes(),
                        password,
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.write_buf)
                        .map_err(|e| Error::protocol(e.to_string()))?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let password = password.as_deref().ok_or_else(no_password)?;
                    let mut mechanisms = body.mechanisms();
                    let mut supported = false;
                    while let Some(m) = fallible_iterator::FallibleIterator::next(&mut mechanisms)
                        .map_err(|e| Error::protocol(e.to_string()))?
                    {
                        supported |= m == "SCRAM-SHA-256";
                    }
                    if !supported {
                        return Err(Error::new(
                            ErrorKind::Setup,
                            "the server offers no SASL mechanism sluice supports (SCRAM-SHA-256)",
                        ));
                    }
                    let s = ScramSha256::new(password, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(
                        "SCRAM-SHA-256",
                        s.message(),
                        &mut self.write_buf,
                    )
                    .map_err(|e| Error::protocol(e.to_string()))?;
                    self.flush().await?;
                    scram = Some(s);
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| Error::protocol("SASL continue without SASL start"))?;
                    s.update(body.data()).map_err(|e| {
                        Error::new(
                            ErrorKind::Config,
                            format!("SCRAM authentication failed: {e}"),
                        )
                    })?;
                    frontend::sasl_response(s.message(), &mut self.write_buf)
                        .map_err(|e| Error::protocol(e.to_string()))?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| Error::protocol("SASL final without SASL start"))?;
                    s.finish(body.data()).map_err(|e| {
                        Error::new(
                            ErrorKind::Config,
                            format!("SCRAM server signature invalid: {e}"),
                        )
                    })?;
                }
                backend::Message::ParameterStatus(body) => {
                    if let (Ok(name), Ok(value)) = (body.name(), body.value()) {
                        self.server_params.insert(name.to_owned(), value.to_owned());
                    }
                }
                backend::Message::BackendKeyData(_) | backend::Message::NoticeResponse(_) => {}
                backend::Message::ReadyForQuery(_) => return Ok(()),
                backend::Message::ErrorResponse(body) => return Err(server_error(body)),
                _ => return Err(Error::protocol("unexpected message during startup")),
            }
        }
    }

    /// A server parameter reported at startup (e.g. `server_version`).
    pub fn server_param(&self, name: &str) -> Option<&str> {
        self.server_params.get(name).map(String::as_str)
    }

    /// Runs a replication command or query and returns its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        frontend::query(sql, &mut self.write_buf).map_err(|e| Error::protocol(e.to_string()))?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.read_message().await? {
                backend::Message::DataRow(body) => {
                    let mut row = Vec::new();
                    let buffer = body.buffer();
                    let mut ranges = body.ranges();
                    while let Some(range) = fallible_iterator::FallibleIterator::next(&mut ranges)
                        .map_err(|e| Error::protocol(e.to_string()))?
                    {
                        row.push(range.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned()));
                    }
                    rows.push(row);
                }
                backend::Message::ErrorResponse(body) => error = Some(server_error(body)),
                backend::Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// Starts streaming pgoutput changes of `publication` from `slot`.
    /// Postgres resumes from the slot's confirmed position when it is later than `start`.
    pub async fn start_replication(
        &mut self,
        slot: &str,
        start: Lsn,
        publication: &str,
    ) -> Result<()> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (\"proto_version\" '1', \"publication_names\" {}, \"messages\" 'true')",
            crate::model::ident::quote_ident(slot),
            start,
            quote_literal(&crate::model::ident::quote_ident(publication)),
        );
        frontend::query(&sql, &mut self.write_buf).map_err(|e| Error::protocol(e.to_string()))?;
        self.flush().await?;
        loop {
            // CopyBothResponse ('W') is not among postgres-protocol's messages.
            if let Some(len) = self.peek_message(b'W').await? {
                self.read_buf.advance(1 + len);
                self.streaming = true;
                return Ok(());
            }
            match self.read_message().await? {
                backend::Message::ErrorResponse(body) => return Err(server_error(body)),
                backend::Message::NoticeResponse(_) => {}
                _ => return Err(Error::protocol("unexpected answer to START_REPLICATION")),
            }
        }
    }

    /// Appends replication events to `out` until `max_events` or `max_bytes`
    /// are reached, or until `linger` passed since the first event with no
    /// more data, or until `idle` passed with no event at all. Returns the
    /// number of payload bytes appended.
    pub async fn read_events(
        &mut self,
        out: &mut Vec<ReplicationEvent>,
        max_events: usize,
        max_bytes: usize,
        linger: Duration,
        idle: Duration,
    ) -> Result<usize> {
        let started = out.len();
        let mut bytes = 0usize;
        let mut first_at: Option<Instant> = None;
        let idle_deadline = Instant::now() + idle;
        loop {
            while let Some(event) = self.parse_event()? {
                if let ReplicationEvent::XLogData { data, .. } = &event {
                    bytes += data.len();
                }
                out.push(event);
                first_at.get_or_insert_with(Instant::now);
                if out.len() - started >= max_events || bytes >= max_bytes {
                    return Ok(bytes);
                }
            }
            let deadline = match first_at {
                Some(at) => at + linger,
                None => idle_deadline,
            };
            let now = Instant::now();
            if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 4 {
                self.read_buf.reserve(READ_CHUNK);
            }
            if now >= deadline {
                // What the socket holds already joins the batch; nothing
                // waits for more.
                use futures_util::FutureExt;
                match self.stream.read_buf(&mut self.read_buf).now_or_never() {
                    Some(read) if first_at.is_some() => {
                        received(read)?;
                        continue;
                    }
                    _ => return Ok(bytes),
                }
            }
            match tokio::time::timeout(deadline - now, self.stream.read_buf(&mut self.read_buf))
                .await
            {
                Err(_) => return Ok(bytes),
                Ok(read) => received(read)?,
            }
        }
    }

    /// Parses one replication event from the read buffer (see `parse_event`).
    fn parse_event(&mut self) -> Result<Option<ReplicationEvent>> {
        parse_event(&mut self.read_buf)
    }

    /// Sends a standby status update: everything up to `flush` is durable on our side.
    pub async fn send_status(&mut self, flush: Lsn, reply_requested: bool) -> Result<()> {
        let mut payload = BytesMut::with_capacity(34);
        payload.put_u8(b'r');
        payload.put_u64(flush.0); // written
        payload.put_u64(flush.0); // flushed
        payload.put_u64(flush.0); // applied
        payload.put_i64(pg_now_micros());
        payload.put_u8(reply_requested as u8);
        frontend::CopyData::new(payload.freeze())
            .map_err(|e| Error::protocol(e.to_string()))?
            .write(&mut self.write_buf);
        self.flush().await
    }

    /// Ends the stream and the session politely.
    pub async fn close(mut self) {
        if self.streaming {
            frontend::copy_done(&mut self.write_buf);
        }
        frontend::terminate(&mut self.write_buf);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.flush()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.stream.shutdown()).await;
    }

    async fn flush(&mut self) -> Result<()> {
        let buf = self.write_buf.split();
        self.stream.write_all(&buf).await.map_err(|e| {
            Error::new(
                ErrorKind::Connection,
                format!("writing to the server failed: {e}"),
            )
        })?;
        self.stream.flush().await.map_err(|e| {
            Error::new(
                ErrorKind::Connection,
                format!("writing to the server failed: {e}"),
            )
        })
    }

    /// Waits for a whole message in the buffer; returns its length field when
    /// it has tag `tag` (without consuming it), `None` for other tags.
    async fn peek_message(&mut self, tag: u8) -> Result<Option<usize>> {
        loop {
            if self.read_buf.len() >= 5 {
                let len = u32::from_be_bytes([
                    self.read_buf[1],
                    self.read_buf[2],
                    self.read_buf[3],
                    self.read_buf[4],
                ]) as usize;
                if self.read_buf.len() > len {
                    return Ok((self.read_buf[0] == tag).then_some(len));
                }
            }
            self.read_more().await?;
        }
    }

    /// Reads more bytes from the server into the buffer.
    async fn read_more(&mut self) -> Result<()> {
        self.read_buf.reserve(4096);
        let n = self
            .stream
            .read_buf(&mut self.read_buf)
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Connection,
                    format!("reading from the server failed: {e}"),
                )
            })?;
        if n == 0 {
            return Err(Error::new(
                ErrorKind::Connection,
                "the server closed the connection",
            ));
        }
        Ok(())
    }

    async fn read_message(&mut self) -> Result<backend::Message> {
        loop {
            if let Some(message) = backend::Message::parse(&mut self.read_buf)
                .map_err(|e| Error::protocol(e.to_string()))?
            {
                return Ok(message);
            }
            self.read_more().await?;
        }
    }
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Now, in microseconds since the Postgres epoch.
pub fn pg_now_micros() -> i64 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    unix - PG_EPOCH_OFFSET_MICROS
}

/// Turns an ErrorResponse into an error of the right kind, with a hint where we know one.
fn server_error(body: backend::ErrorResponseBody) -> Error {
    let mut code = String::new();
    let mut message = String::new();
    let mut detail = String::new();
    let mut hint = String::new();
    let mut fields = body.fields();
    while let Ok(Some(field)) = fallible_iterator::FallibleIterator::next(&mut fields) {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'C' => code = value,
            b'M' => message = value,
            b'D' => detail = value,
            b'H' => hint = value,
            _ => {}
        }
    }
    let mut text = format!("server error {code}: {message}");
    if !detail.is_empty() {
        text.push_str(&format!(" ({detail})"));
    }
    let (kind, our_hint) = match code.as_str() {
        "28000" | "28P01" => (ErrorKind::Config, Some("check the user and password; for replication the role needs the REPLICATION attribute and a pg_hba.conf line for `replication`")),
        "55006" => (ErrorKind::Connection, Some("another process uses this replication slot; stop it or configure another source.slot")),
        "42704" => (ErrorKind::Setup, Some("the replication slot or publication does not exist: changes made since are lost to this slot (see source.on_slot_lost); `sluice check` explains")),
        "42501" => (ErrorKind::Setup, Some("the role lacks a privilege; see `sluice check`")),
        "3D000" => (ErrorKind::Config, Some("the database does not exist; check the database URL")),
        // The server is shutting down, starting up or out of connections:
        // an outage, tried again until it is over.
        "57P01" | "57P02" | "57P03" | "53300" => (ErrorKind::Connection, None),
        _ => (ErrorKind::Protocol, None),
    };
    let mut error = Error::new(kind, text);
    if let Some(h) = our_hint
        .map(str::to_owned)
        .or((!hint.is_empty()).then_some(hint))
    {
        error = error.hint(h);
    }
    error
}

/// The outcome of a read of the replication stream: an error when the
/// connection failed or the server closed it.
fn received(read: std::io::Result<usize>) -> Result<()> {
    match read {
        Ok(0) => Err(Error::new(
            ErrorKind::Connection,
            "the server closed the replication connection",
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(Error::new(
            ErrorKind::Connection,
            format!("reading the replication stream failed: {e}"),
        )),
    }
}

/// Parses one replication event from the bytes read off the connection,
/// skipping other messages; `None` until a whole message is there.
pub fn parse_event(buf: &mut BytesMut) -> Result<Option<ReplicationEvent>> {
    loop {
        if let Some(header) = buf.get(1..5) {
            let len = u32::from_be_bytes(header.try_into().expect("four bytes"));
            if len > MAX_MESSAGE_BYTES {
                return Err(Error::protocol(format!(
                    "the server sent a message of {len} bytes (type {:?}), more than Postgres \
                     ever sends: the replication stream is broken",
                    buf[0] as char
                )));
            }
        }
        let Some(message) =
            backend::Message::parse(buf).map_err(|e| Error::protocol(e.to_string()))?
        else {
            return Ok(None);
        };
        match message {
            backend::Message::CopyData(body) => {
                let mut data = body.into_bytes();
                if data.is_empty() {
                    return Err(Error::protocol("empty CopyData message"));
                }
                match data[0] {
                    b'w' if data.len() >= 25 => {
                        let start = Lsn((&data[1..9]).get_u64());
                        let end = Lsn((&data[9..17]).get_u64());
                        data.advance(25);
                        return Ok(Some(ReplicationEvent::XLogData { start, end, data }));
                    }
                    b'k' if data.len() >= 18 => {
                        let wal_end = Lsn((&data[1..9]).get_u64());
                        let reply_requested = data[17] != 0;
                        return Ok(Some(ReplicationEvent::Keepalive {
                            wal_end,
                            reply_requested,
                        }));
                    }
                    tag => {
                        return Err(Error::protocol(format!(
                            "unknown replication message {:?} of {} bytes",
                            tag as char,
                            data.len()
                        )))
                    }
                }
            }
            backend::Message::ErrorResponse(body) => return Err(server_error(body)),
            backend::Message::CopyDone => {
                return Err(Error::new(
                    ErrorKind::Connection,
                    "the server ended the replication stream",
                ))
            }
            _ => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_longer_than_postgres_sends_is_refused_before_memory_is_reserved() {
        // A CopyData header claiming 4 GiB (found by the replication_stream
        // fuzz target): the parser would reserve that much to read it.
        let mut buf = BytesMut::from(&[b'd', 0xff, 0xff, 0xff, 0xf0, b'w'][..]);
        let e = parse_event(&mut buf).unwrap_err();
        assert!(e.to_string().contains("more than Postgres"), "{e}");
        assert!(buf.capacity() < 1 << 20, "reserved {}", buf.capacity());
        // A whole keepalive still reads.
        let mut keepalive = BytesMut::new();
        keepalive.extend_from_slice(&[b'd', 0, 0, 0, 22, b'k']);
        keepalive.extend_from_slice(&0x16B3778u64.to_be_bytes());
        keepalive.extend_from_slice(&0u64.to_be_bytes());
        keepalive.extend_from_slice(&[1]);
        assert!(matches!(
            parse_event(&mut keepalive).unwrap(),
            Some(ReplicationEvent::Keepalive {
                reply_requested: true,
                ..
            })
        ));
    }
}
