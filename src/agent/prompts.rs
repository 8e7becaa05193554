//! The audio a `prompt` agent may play: files inside the operator's media
//! directory, or audio uploaded through the API, loaded once and shared.
//!
//! `prompt.wav_path` names a file relative to `[media] dir` (or an absolute
//! path inside it). [`Library::resolve`] canonicalizes it (so `..` and
//! symlinks are followed before the check), refuses anything outside the
//! directory, anything that is not a regular file (`/dev/zero`, a FIFO),
//! and anything larger than `[media] max_bytes`; a file is read with that
//! cap, decoded once, and kept. Uploaded audio (`prompt.audio_id`) comes
//! from the store through an [`AudioSource`] the daemon installs at start
//! (this module must not import the store), also decoded once and kept.
//!
//! The library is process-wide ([`install`]); before it is installed no
//! file may be played (library tests, tools).
//!
//! Must not: read a path it has not resolved, or read more than the cap.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// Where uploaded audio comes from: the 8 kHz samples of upload `id`
/// (`None`: no such upload).
#[async_trait::async_trait]
pub trait AudioSource: Send + Sync {
    async fn samples(&self, id: &str) -> Result<Option<Vec<i16>>, String>;
}

/// How many decoded prompts stay in memory; past it the oldest are
/// dropped (and read again when next played).
const CACHE_ENTRIES: usize = 256;

/// Decoded prompts by canonical path or upload id, and their insertion
/// order for eviction.
type Cache = (HashMap<String, Arc<Vec<i16>>>, Vec<String>);

/// The media directory, its cap and what was already loaded.
pub struct Library {
    dir: Option<PathBuf>,
    max_bytes: u64,
    source: Option<Arc<dyn AudioSource>>,
    /// Keyed by canonical path or upload id; insertion order for eviction.
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("dir", &self.dir)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl Library {
    /// A library over `dir` (canonicalized now: a missing directory is an
    /// error at start, not at the first call).
    pub fn new(
        dir: Option<&Path>,
        max_bytes: u64,
        source: Option<Arc<dyn AudioSource>>,
    ) -> Result<Self, String> {
        let dir = dir
            .map(|d| {
                std::fs::canonicalize(d)
                    .map_err(|e| format!("media.dir {}: {e}", d.display()))
                    .and_then(|c| {
                        if c.is_dir() {
                            Ok(c)
                        } else {
                            Err(format!("media.dir {} is not a directory", d.display()))
                        }
                    })
            })
            .transpose()?;
        Ok(Self {
            dir,
            max_bytes,
            source,
            cache: Mutex::default(),
        })
    }

    /// The file `wav_path` names, if it may be played: inside the media
    /// directory after every symlink and `..` is resolved, a regular file,
    /// at most `max_bytes`.
    pub fn resolve(&self, wav_path: &str) -> Result<PathBuf, String> {
        let dir = self.dir.as_ref().ok_or(
            "no media directory is configured ([media] dir); upload the audio with POST /v1/audio",
        )?;
        if wav_path.is_empty() || wav_path.contains('\0') {
            return Err("must name a file".into());
        }
        let joined = dir.join(wav_path);
        let real = std::fs::canonicalize(&joined)
            .map_err(|_| "is not a readable file in the media directory".to_string())?;
        if !real.starts_with(dir) {
            return Err("must be inside the media directory".into());
        }
        let meta = std::fs::metadata(&real)
            .map_err(|_| "is not a readable file in the media directory".to_string())?;
        if !meta.is_file() {
            return Err("must be a regular file".into());
        }
        if meta.len() > self.max_bytes {
            return Err(format!("is larger than {} bytes", self.max_bytes));
        }
        Ok(real)
    }

    fn cached(&self, key: &str) -> Option<Arc<Vec<i16>>> {
        self.lock().0.get(key).cloned()
    }

    fn keep(&self, key: String, samples: Arc<Vec<i16>>) {
        let mut guard = self.lock();
        let (map, order) = &mut *guard;
        if map.insert(key.clone(), samples).is_none() {
            order.push(key);
        }
        while order.len() > CACHE_ENTRIES {
            let old = order.remove(0);
            map.remove(&old);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The 8 kHz samples of the file `wav_path` names (see [`Self::resolve`]).
    pub async fn file(&self, wav_path: &str) -> Result<Arc<Vec<i16>>, String> {
        let real = self.resolve(wav_path)?;
        let key = real.to_string_lossy().into_owned();
        if let Some(s) = self.cached(&key) {
            return Ok(s);
        }
        let bytes = read_capped(&real, self.max_bytes).await?;
        let samples = Arc::new(crate::media::wav::read_mono_8k(&bytes)?);
        self.keep(key, samples.clone());
        Ok(samples)
    }

    /// The samples of upload `id`.
    pub async fn upload(&self, id: &str) -> Result<Arc<Vec<i16>>, String> {
        if let Some(s) = self.cached(id) {
            return Ok(s);
        }
        let source = self
            .source
            .as_ref()
            .ok_or("uploaded audio is not available")?;
        let samples = Arc::new(
            source
                .samples(id)
                .await?
                .ok_or_else(|| format!("no uploaded audio {id}"))?,
        );
        self.keep(id.to_string(), samples.clone());
        Ok(samples)
    }

    /// Forgets upload `id` (deleted).
    pub fn forget(&self, id: &str) {
        let mut guard = self.lock();
        let (map, order) = &mut *guard;
        map.remove(id);
        order.retain(|k| k != id);
    }
}

/// Reads at most `max` bytes of `path`: a file that grew past the cap after
/// it was checked is refused, not read whole.
async fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|_| "cannot be read".to_string())?;
    let mut out = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut out)
        .await
        .map_err(|_| "cannot be read".to_string())?;
    if out.len() as u64 > max {
        return Err(format!("is larger than {max} bytes"));
    }
    Ok(out)
}

static LIBRARY: OnceLock<Library> = OnceLock::new();

/// Installs the process's library; false when one was already in place.
pub fn install(library: Library) -> bool {
    LIBRARY.set(library).is_ok()
}

/// The process's library (no directory, no uploads until [`install`]).
pub fn library() -> &'static Library {
    LIBRARY.get_or_init(|| Library {
        dir: None,
        max_bytes: 0,
        source: None,
        cache: Mutex::default(),
    })
}

/// Decodes an upload: a WAV file (16-bit PCM, any rate, mixed to mono and
/// resampled to 8 kHz) or raw G.711 at 8 kHz (`pcmu`, `pcma`). Returns the
/// samples; refuses empty or undecodable audio.
pub fn decode_upload(format: &str, bytes: &[u8]) -> Result<Vec<i16>, String> {
    use crate::media::g711::Codec;
    let samples = match format {
        "wav" => crate::media::wav::read_mono_8k(bytes)?,
        "pcmu" | "pcma" => {
            let codec = if format == "pcmu" {
                Codec::Pcmu
            } else {
                Codec::Pcma
            };
            let mut out = Vec::with_capacity(bytes.len());
            codec.decode_into(bytes, &mut out);
            out
        }
        other => return Err(format!("unknown format {other:?}")),
    };
    if samples.is_empty() {
        return Err("the audio is empty".into());
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_regular_files_inside_the_directory_play() {
        let root = tempfile::tempdir().unwrap();
        let media = root.path().join("media");
        std::fs::create_dir(&media).unwrap();
        let wav = crate::media::wav::write_pcm16(&[1000; 800], 8000, 1);
        std::fs::write(media.join("hello.wav"), &wav).unwrap();
        std::fs::write(root.path().join("outside.wav"), &wav).unwrap();
        std::fs::write(media.join("big.wav"), vec![0u8; 5000]).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(root.path().join("outside.wav"), media.join("link.wav"))
            .unwrap();
        let lib = Library::new(Some(&media), 4096, None).unwrap();
        assert_eq!(lib.file("hello.wav").await.unwrap().len(), 800);
        let abs = media.join("hello.wav");
        assert!(lib.file(abs.to_str().unwrap()).await.is_ok());
        for bad in [
            "/dev/zero",
            "/etc/passwd",
            "../outside.wav",
            "link.wav",
            "big.wav",
            "missing.wav",
            ".",
            "",
        ] {
            assert!(lib.resolve(bad).is_err(), "{bad}");
        }
        let none = Library::new(None, 4096, None).unwrap();
        assert!(none.resolve("hello.wav").is_err());
    }

    #[test]
    fn uploads_decode_wav_and_g711() {
        let wav = crate::media::wav::write_pcm16(&[500; 160], 8000, 1);
        assert_eq!(decode_upload("wav", &wav).unwrap().len(), 160);
        assert_eq!(decode_upload("pcmu", &[0xff; 160]).unwrap().len(), 160);
        assert!(decode_upload("wav", b"not a wav file at all").is_err());
        assert!(decode_upload("pcma", &[]).is_err());
    }
}
