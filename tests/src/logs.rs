//! Log output captured in memory, by a subscriber set as the calling thread's default: on a
//! current-thread runtime the server's tasks log on that thread too.

use std::io::Write;
use std::sync::{Arc, Mutex};

use tiercache_server::logging::LogSettings;
use tracing_subscriber::fmt::MakeWriter;

/// Log output, kept in memory.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Installs a WARN-and-above text subscriber writing here as this thread's default.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// Installs the service's own subscriber (`tiercache_server::logging`) for `settings`,
    /// without colour, writing here as this thread's default.
    pub fn install_service(&self, settings: LogSettings) -> tracing::subscriber::DefaultGuard {
        tracing::subscriber::set_default(settings.subscriber(self.clone(), false))
    }

    /// Every captured line.
    pub fn all_lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The captured lines that contain `text`.
    pub fn lines(&self, text: &str) -> Vec<String> {
        self.all_lines()
            .into_iter()
            .filter(|line| line.contains(text))
            .collect()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
