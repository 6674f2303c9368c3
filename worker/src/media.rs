//! Inbound media (MMS): fetched safely, made ready for the chat pipeline,
//! and deleted from Twilio when the channel asks (docs/ARCHITECTURE.md §2.6).
//!
//! A `MediaUrlN` is requested only when it is exactly this message's media
//! on the channel's Twilio API base ([`MediaRef`]); anything else is never
//! requested. The request carries the account's Basic auth; Twilio answers
//! with a redirect to its media store, which is followed by hand (the
//! client follows none) and only to a prefix in the channel's
//! `media.hosts`, without the credentials. Size (all of a message's media
//! together), time (per file) and content type are bounded.
//!
//! Pictures scaled for a model are decoded at most [`MAX_CONCURRENT_DECODES`]
//! messages at once per process, a message's pictures together within
//! [`MAX_MESSAGE_PIXELS`] (read from their headers first), so a picture bomb
//! (a few kB of PNG that decodes to gigabytes) costs neither memory nor time.
//!
//! What cannot be loaded stays an [`Attachment`] with a [`Skip`]: the model
//! is told in words ("[a photo could not be loaded]") and the worker writes
//! a `media_skipped` note. A transient failure (connect error, timeout,
//! 429, 5xx) is retried with the chat call's schedule by the caller.

use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use bytes::{Bytes, BytesMut};
use image::{DynamicImage, ImageFormat, ImageReader};
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use smsgate_shared::config::{Channel, essence};
use smsgate_shared::envelope::Inbound;
use smsgate_shared::media::MediaRef;
use smsgate_shared::retry::parse_retry_after;

/// Redirects followed for one media file (Twilio uses one).
const MAX_REDIRECTS: usize = 3;
/// The longest `Retry-After` honoured, as for the chat backend.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// The pixels one message's pictures may have together to be decoded: a
/// picture whose size (read from its header, before anything is decoded)
/// is over what is left of it is not decoded but described and noted. 24 M
/// holds two 12-megapixel phone photos; carriers deliver MMS pictures far
/// smaller. (A PNG of zeros of 6300x6300 is 116 kB and would take 120 MB
/// decoded.)
pub const MAX_MESSAGE_PIXELS: u64 = 24_000_000;
/// The most bytes a decoded pixel may take (RGBA, 8 bits a channel): a
/// decode's allocation limit is what is left of the message's pixels times
/// this, so a 16-bit picture counts for twice its size.
const BYTES_PER_PIXEL: u64 = 4;
/// What a decoder may allocate beside the picture itself.
const DECODER_SLACK: u64 = 1 << 20;
/// Messages whose pictures are decoded at once in this process (each
/// decodes its pictures one after the other): with [`MAX_MESSAGE_PIXELS`]
/// this bounds the memory decoding takes, whatever arrives at once.
pub const MAX_CONCURRENT_DECODES: usize = 2;
static DECODES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_CONCURRENT_DECODES);

/// One `MediaUrlN` of an inbound message and what became of it.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// N in `MediaUrlN`.
    pub index: usize,
    /// The URL as Twilio sent it (a reference; it is never re-requested
    /// unless it passed [`MediaRef::parse`]).
    pub url: String,
    /// The type the webhook named (`MediaContentTypeN`).
    pub declared_type: Option<String>,
    pub content: Content,
}

#[derive(Debug, Clone)]
pub enum Content {
    Loaded {
        /// The type the media store answered with (else the declared one).
        content_type: String,
        bytes: Bytes,
        /// The size as fetched (before any scaling for the model).
        fetched_bytes: usize,
        media: MediaRef,
    },
    Skipped(Skip),
}

/// Why a media file was not given to the chat pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Not this message's media on the channel's API base: never requested.
    NotTwilio(&'static str),
    /// The type is not in the channel's `media.content_types`.
    TypeNotAllowed(String),
    /// Over what is left of the message's `media.max_bytes`.
    TooLarge { limit: u64 },
    /// A redirect to a host not in `media.hosts`: not followed.
    RedirectRefused(String),
    /// Twilio or the media store refused (401, 403, 404, ...).
    Refused(u16),
    /// Could not be reached or answered 429/5xx; `transient` failures are
    /// worth another delivery.
    Unavailable { detail: String, transient: bool, retry_after: Option<Duration> },
    /// The picture could not be decoded to scale it.
    Unreadable(String),
    /// The picture has more pixels than are left of the message's
    /// [`MAX_MESSAGE_PIXELS`]: never decoded.
    TooManyPixels { width: u32, height: u32, left: u64 },
}

impl Skip {
    fn why(&self) -> String {
        match self {
            Self::NotTwilio(what) => format!("never requested: not this message's Twilio media ({what})"),
            Self::TypeNotAllowed(t) => format!("type {t} is not in media.content_types"),
            Self::TooLarge { limit } => format!("over the {limit}-byte media limit"),
            Self::RedirectRefused(host) => format!("redirect to {host}, which is not in media.hosts; not followed"),
            Self::Refused(status) => format!("refused with HTTP {status}"),
            Self::Unavailable { detail, .. } => format!("unavailable: {detail}"),
            Self::Unreadable(e) => format!("picture could not be read: {e}"),
            Self::TooManyPixels { width, height, left } if *left == MAX_MESSAGE_PIXELS => {
                format!(
                    "{width}x{height} pixels is over the {MAX_MESSAGE_PIXELS}-pixel limit of a message; not decoded"
                )
            }
            Self::TooManyPixels { width, height, left } => format!(
                "{width}x{height} pixels is over the {left} pixels left of the {MAX_MESSAGE_PIXELS}-pixel limit of \
                 a message (its pictures count together); not decoded"
            ),
        }
    }
}

impl Attachment {
    /// The type to show: the fetched one, else the declared one.
    pub fn content_type(&self) -> Option<&str> {
        match &self.content {
            Content::Loaded { content_type, .. } => Some(content_type),
            Content::Skipped(_) => self.declared_type.as_deref(),
        }
    }

    pub fn is_image(&self) -> bool {
        self.content_type().is_some_and(|t| essence(t).starts_with("image/"))
    }

    /// A transient failure: `Some(retry_after)`.
    pub fn transient(&self) -> Option<Option<Duration>> {
        match &self.content {
            Content::Skipped(Skip::Unavailable { transient: true, retry_after, .. }) => Some(*retry_after),
            _ => None,
        }
    }

    /// `data:<type>;base64,...` for a loaded picture.
    pub fn data_url(&self) -> Option<String> {
        match &self.content {
            Content::Loaded { content_type, bytes, .. } if self.is_image() => {
                Some(format!("data:{content_type};base64,{}", STANDARD.encode(bytes)))
            }
            _ => None,
        }
    }

    /// The words the model reads for this attachment, or None when it goes
    /// as a picture.
    pub fn describe(&self) -> Option<String> {
        let kind = self.content_type().map(essence).unwrap_or_else(|| "unknown type".to_owned());
        match &self.content {
            Content::Loaded { .. } if self.is_image() => None,
            Content::Loaded { fetched_bytes, .. } => Some(format!("[an attachment: {kind}, {}]", size(*fetched_bytes))),
            Content::Skipped(_) if self.is_image() => Some("[a photo could not be loaded]".to_owned()),
            Content::Skipped(Skip::TypeNotAllowed(_)) => Some(format!("[an attachment of type {kind}, not opened]")),
            Content::Skipped(_) => Some(format!("[an attachment ({kind}) could not be loaded]")),
        }
    }

    /// One line of the `media_skipped` note, None when it was loaded.
    pub fn skip_line(&self) -> Option<String> {
        match &self.content {
            Content::Skipped(skip) => {
                let kind = self.declared_type.as_deref().map(essence).unwrap_or_else(|| "no type".to_owned());
                Some(format!("MediaUrl{} ({kind}): {}", self.index, skip.why()))
            }
            Content::Loaded { .. } => None,
        }
    }
}

/// `12 kB`, `1.4 MB`.
fn size(bytes: usize) -> String {
    if bytes < 1000 {
        format!("{bytes} bytes")
    } else if bytes < 1_000_000 {
        format!("{} kB", bytes.div_ceil(1000))
    } else {
        format!("{:.1} MB", bytes as f64 / 1_000_000.0)
    }
}

/// The words for media of an earlier turn (only references are kept).
pub fn describe_earlier(content_type: Option<&str>) -> String {
    match content_type.map(essence) {
        Some(t) if t.starts_with("image/") => "[a photo sent earlier]".to_owned(),
        Some(t) => format!("[an attachment ({t}) sent earlier]"),
        None => "[an attachment sent earlier]".to_owned(),
    }
}

/// Fetches and deletes inbound media; one per worker, sharing connections.
#[derive(Debug, Clone)]
pub struct Fetcher {
    http: reqwest::Client,
}

impl Fetcher {
    pub fn new() -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            // Redirects are followed by hand, to allowed hosts only.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(8)
            .user_agent(concat!("smsgate-worker/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http })
    }

    /// Every media file of `inbound`, in order, loaded or skipped. The
    /// message's bytes together stay within `media.max_bytes`.
    pub async fn fetch_all(&self, channel: &Channel, inbound: &Inbound) -> Vec<Attachment> {
        let mut budget = channel.media.max_bytes;
        let mut out = Vec::with_capacity(inbound.media.len());
        for (index, m) in inbound.media.iter().enumerate() {
            let declared_type = m.content_type.clone().filter(|t| !t.trim().is_empty());
            let content = match self.fetch_checked(channel, inbound, &m.url, declared_type.as_deref(), budget).await {
                Ok((content_type, bytes, media)) => {
                    budget = budget.saturating_sub(bytes.len() as u64);
                    Content::Loaded { content_type, fetched_bytes: bytes.len(), bytes, media }
                }
                Err(skip) => Content::Skipped(skip),
            };
            let outcome = match &content {
                Content::Loaded { .. } => "loaded",
                Content::Skipped(Skip::NotTwilio(_)) => "refused_url",
                Content::Skipped(_) => "skipped",
            };
            metrics::counter!("smsgate_worker_media_total", "outcome" => outcome).increment(1);
            out.push(Attachment { index, url: m.url.clone(), declared_type, content });
        }
        out
    }

    async fn fetch_checked(
        &self,
        channel: &Channel,
        inbound: &Inbound,
        url: &str,
        declared: Option<&str>,
        budget: u64,
    ) -> Result<(String, Bytes, MediaRef), Skip> {
        let media = MediaRef::parse(&channel.api_base, channel.account_sid.as_str(), inbound.message_sid.as_str(), url)
            .map_err(|e| Skip::NotTwilio(e.0))?;
        if let Some(t) = declared.filter(|t| !channel.media.allows(t)) {
            return Err(Skip::TypeNotAllowed(essence(t)));
        }
        if budget == 0 {
            return Err(Skip::TooLarge { limit: channel.media.max_bytes });
        }
        let timeout = Duration::from_millis(channel.media.timeout_ms);
        let (content_type, bytes) = tokio::time::timeout(timeout, self.fetch(channel, &media, declared, budget))
            .await
            .map_err(|_| Skip::Unavailable {
                detail: format!("no answer within {} ms", channel.media.timeout_ms),
                transient: true,
                retry_after: None,
            })??;
        Ok((content_type, bytes, media))
    }

    async fn fetch(
        &self,
        channel: &Channel,
        media: &MediaRef,
        declared: Option<&str>,
        budget: u64,
    ) -> Result<(String, Bytes), Skip> {
        let mut target = url::Url::parse(&media.url).map_err(|_| Skip::NotTwilio("not a URL"))?;
        // Twilio's own URL gets the account's credentials; the media store's
        // signed URL needs none and must never see them.
        let mut on_twilio = true;
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self.http.get(target.clone());
            if on_twilio {
                request = request.basic_auth(channel.account_sid.as_str(), Some(channel.auth_token.expose_secret()));
            }
            let response = request.send().await.map_err(unavailable)?;
            let status = response.status();
            if status.is_redirection() {
                let next = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|l| target.join(l).ok())
                    .ok_or_else(|| permanent("a redirect without a usable Location"))?;
                if !allowed_host(&channel.media.hosts, &next) {
                    let host = format!("{}://{}", next.scheme(), next.host_str().unwrap_or("?"));
                    return Err(Skip::RedirectRefused(host));
                }
                target = next;
                on_twilio = false;
                continue;
            }
            if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, MAX_RETRY_AFTER));
                return Err(Skip::Unavailable { detail: format!("HTTP {status}"), transient: true, retry_after });
            }
            if !status.is_success() {
                return Err(Skip::Refused(status.as_u16()));
            }
            let content_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(essence)
                .filter(|t| !t.is_empty() && t != "application/octet-stream")
                .or_else(|| declared.map(essence))
                .unwrap_or_else(|| "application/octet-stream".to_owned());
            if !channel.media.allows(&content_type) {
                return Err(Skip::TypeNotAllowed(content_type));
            }
            let limit = Skip::TooLarge { limit: channel.media.max_bytes };
            if response.content_length().is_some_and(|n| n > budget) {
                return Err(limit);
            }
            let mut response = response;
            let mut body = BytesMut::new();
            while let Some(chunk) = response.chunk().await.map_err(unavailable)? {
                if (body.len() + chunk.len()) as u64 > budget {
                    return Err(limit);
                }
                body.extend_from_slice(&chunk);
            }
            return Ok((content_type, body.freeze()));
        }
        Err(permanent("too many redirects"))
    }

    /// `DELETE …/Media/<MediaSid>.json` with the account's credentials. A
    /// 404 counts as deleted (a redelivery deleting again).
    pub async fn delete(&self, channel: &Channel, media: &MediaRef) -> Result<(), String> {
        let response = self
            .http
            .delete(media.resource_url())
            .basic_auth(channel.account_sid.as_str(), Some(channel.auth_token.expose_secret()))
            .timeout(Duration::from_millis(channel.media.timeout_ms))
            .send()
            .await
            .map_err(|e| format!("{}", e.without_url()))?;
        match response.status() {
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
            s => Err(format!("HTTP {s}")),
        }
    }
}

fn unavailable(e: reqwest::Error) -> Skip {
    // Without the URL: it names the account and the message.
    Skip::Unavailable { detail: e.without_url().to_string(), transient: true, retry_after: None }
}

fn permanent(detail: &str) -> Skip {
    Skip::Unavailable { detail: detail.to_owned(), transient: false, retry_after: None }
}

/// Whether `url` is under one of the `media.hosts` prefixes: same scheme,
/// host and port, the path starting with the prefix's path.
pub fn allowed_host(hosts: &[String], url: &url::Url) -> bool {
    if !url.username().is_empty() || url.password().is_some() {
        return false;
    }
    hosts.iter().filter_map(|h| url::Url::parse(h).ok()).any(|p| {
        p.scheme() == url.scheme()
            && p.host_str().is_some()
            && p.host_str() == url.host_str()
            && p.port_or_known_default() == url.port_or_known_default()
            && url.path().starts_with(p.path())
    })
}

/// Scales the loaded pictures down to `max_edge` for a model (0: as
/// fetched). Decoding runs off the async threads, at most
/// [`MAX_CONCURRENT_DECODES`] messages at once, and a message's pictures
/// together within [`MAX_MESSAGE_PIXELS`]; a picture that cannot be
/// decoded, or is over the pixels left, becomes a [`Skip`] (described to
/// the model and noted, never silently dropped).
pub async fn fit_for_model(attachments: Vec<Attachment>, max_edge: u32) -> Vec<Attachment> {
    if max_edge == 0 || !attachments.iter().any(|a| a.is_image() && matches!(a.content, Content::Loaded { .. })) {
        return attachments;
    }
    // The semaphore is never closed; were it, decoding unbounded is not an option.
    let Ok(_permit) = DECODES.acquire().await else {
        return refuse_pictures(attachments, "no decoding slot".to_owned());
    };
    let fallback = attachments.clone();
    match tokio::task::spawn_blocking(move || fit_all(attachments, max_edge, MAX_MESSAGE_PIXELS)).await {
        Ok(fitted) => fitted,
        // A decoder that panicked: the pictures are not given as fetched
        // (they were never checked), but described and noted.
        Err(e) => refuse_pictures(fallback, format!("the decoder failed ({e})")),
    }
}

/// Every loaded picture of `attachments` skipped as unreadable for `why`.
fn refuse_pictures(attachments: Vec<Attachment>, why: String) -> Vec<Attachment> {
    attachments
        .into_iter()
        .map(|mut a| {
            if a.is_image() && matches!(a.content, Content::Loaded { .. }) {
                a.content = Content::Skipped(Skip::Unreadable(why.clone()));
            }
            a
        })
        .collect()
}

/// [`fit`] for each loaded picture in order, the message's pictures
/// together within `pixels` (a picture counts once its size is read).
fn fit_all(attachments: Vec<Attachment>, max_edge: u32, pixels: u64) -> Vec<Attachment> {
    let mut left = pixels;
    attachments
        .into_iter()
        .map(|mut a| {
            if let Content::Loaded { content_type, bytes, .. } = &mut a.content
                && content_type.starts_with("image/")
            {
                match fit(content_type, bytes, max_edge, left) {
                    Ok(Fitted { pixels, scaled }) => {
                        left = left.saturating_sub(pixels);
                        if let Some((t, b)) = scaled {
                            *content_type = t;
                            *bytes = b;
                        }
                    }
                    Err(skip) => a.content = Content::Skipped(skip),
                }
            }
            a
        })
        .collect()
}

/// A picture read: its pixels, and the scaled copy when it was too large.
#[derive(Debug, PartialEq)]
struct Fitted {
    pixels: u64,
    scaled: Option<(String, Bytes)>,
}

/// The picture scaled so its longest edge is `max_edge`, re-encoded (JPEG,
/// or PNG when it has transparency); `scaled` is None when it is small
/// enough already. A picture of more than `left` pixels is not decoded.
fn fit(content_type: &str, bytes: &[u8], max_edge: u32, left: u64) -> Result<Fitted, Skip> {
    let unreadable = |e: image::ImageError| Skip::Unreadable(e.to_string());
    let format = ImageFormat::from_mime_type(content_type)
        .ok_or_else(|| Skip::Unreadable(format!("{content_type} is not decoded")))?;
    let reader = || {
        let mut reader = ImageReader::with_format(std::io::Cursor::new(bytes), format);
        let mut limits = image::Limits::default();
        // The decoders' own buffers (rows, the inflate window) come on top.
        limits.max_alloc = Some(left.saturating_mul(BYTES_PER_PIXEL).saturating_add(DECODER_SLACK));
        reader.limits(limits);
        reader
    };
    // The header only: nothing is decoded yet.
    let (width, height) = reader().into_dimensions().map_err(unreadable)?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > left {
        return Err(Skip::TooManyPixels { width, height, left });
    }
    if width.max(height) <= max_edge {
        return Ok(Fitted { pixels, scaled: None });
    }
    let picture = reader().decode().map_err(unreadable)?;
    // Integer area sampling: no floating-point copy of the whole picture
    // (a filtered resize would take 16 bytes a pixel on top of the decode).
    let small = picture.thumbnail(max_edge, max_edge);
    drop(picture);
    let mut out = std::io::Cursor::new(Vec::new());
    let scaled = if small.color().has_alpha() {
        small.write_to(&mut out, ImageFormat::Png).map_err(unreadable)?;
        ("image/png".to_owned(), Bytes::from(out.into_inner()))
    } else {
        let rgb = DynamicImage::ImageRgb8(small.to_rgb8());
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85);
        rgb.write_with_encoder(encoder).map_err(unreadable)?;
        ("image/jpeg".to_owned(), Bytes::from(out.into_inner()))
    };
    Ok(Fitted { pixels, scaled: Some(scaled) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(w, h, image::Rgb([200, 40, 40])));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn large_pictures_are_scaled_to_the_longest_edge_and_small_ones_left_alone() {
        let all = MAX_MESSAGE_PIXELS;
        let (t, b) = fit("image/png", &png(400, 100), 100, all).unwrap().scaled.unwrap();
        assert_eq!(t, "image/jpeg");
        let scaled = image::load_from_memory(&b).unwrap();
        assert_eq!((scaled.width(), scaled.height()), (100, 25));
        assert_eq!(fit("image/png", &png(50, 80), 100, all).unwrap(), Fitted { pixels: 4000, scaled: None });
        assert!(matches!(fit("image/png", b"not a png", 100, all), Err(Skip::Unreadable(_))));
        assert!(matches!(fit("image/heic", b"x", 100, all), Err(Skip::Unreadable(_))));
    }

    #[test]
    fn a_messages_pictures_share_one_pixel_budget_and_what_is_over_is_described() {
        let picture = |w, h| Attachment {
            index: 0,
            url: "u".into(),
            declared_type: Some("image/png".into()),
            content: Content::Loaded {
                content_type: "image/png".into(),
                bytes: Bytes::from(png(w, h)),
                fetched_bytes: 0,
                media: MediaRef { url: "u".into(), media_sid: "ME".into() },
            },
        };
        // 40x40 = 1600 each; a budget of 4000 holds two of them.
        let out = fit_all(vec![picture(40, 40), picture(40, 40), picture(40, 40), picture(10, 10)], 20, 4000);
        let skips: Vec<Option<String>> = out.iter().map(Attachment::skip_line).collect();
        assert_eq!(skips[0], None);
        assert_eq!(skips[1], None);
        assert_eq!(
            skips[2].as_deref(),
            Some(
                "MediaUrl0 (image/png): 40x40 pixels is over the 800 pixels left of the 24000000-pixel limit of a \
                 message (its pictures count together); not decoded"
            )
        );
        assert_eq!(skips[3], None, "a smaller one still fits");
        assert_eq!(out[2].describe().as_deref(), Some("[a photo could not be loaded]"));
        let alone = Skip::TooManyPixels { width: 6300, height: 6300, left: MAX_MESSAGE_PIXELS };
        assert_eq!(alone.why(), "6300x6300 pixels is over the 24000000-pixel limit of a message; not decoded");
    }

    #[test]
    fn redirects_go_only_to_the_configured_prefixes() {
        let hosts = vec![
            "https://mms.twiliocdn.com/".to_owned(),
            "https://s3-external-1.amazonaws.com/media.twiliocdn.com/".to_owned(),
            "http://127.0.0.1:9000/m/".to_owned(),
        ];
        let ok = |u: &str| allowed_host(&hosts, &url::Url::parse(u).unwrap());
        assert!(ok("https://mms.twiliocdn.com/AC1/abc?Expires=1&Signature=x"));
        assert!(ok("https://s3-external-1.amazonaws.com/media.twiliocdn.com/AC1/x"));
        assert!(ok("http://127.0.0.1:9000/m/x"));
        assert!(!ok("http://mms.twiliocdn.com/x"));
        assert!(!ok("https://mms.twiliocdn.com.evil.example/x"));
        assert!(!ok("https://s3-external-1.amazonaws.com/other-bucket/x"));
        assert!(!ok("http://127.0.0.1:9001/m/x"));
        assert!(!ok("http://127.0.0.1:9000/other"));
        assert!(!ok("https://user:pw@mms.twiliocdn.com/x"));
        assert!(!ok("http://169.254.169.254/latest/meta-data"));
    }

    #[test]
    fn what_the_model_reads_for_each_attachment() {
        let media = MediaRef { url: "u".into(), media_sid: "ME".into() };
        let loaded = |t: &str, n: usize| Attachment {
            index: 0,
            url: "u".into(),
            declared_type: Some(t.into()),
            content: Content::Loaded {
                content_type: t.into(),
                bytes: Bytes::from(vec![0; 3]),
                fetched_bytes: n,
                media: media.clone(),
            },
        };
        let skipped = |t: &str, skip: Skip| Attachment {
            index: 1,
            url: "u".into(),
            declared_type: Some(t.into()),
            content: Content::Skipped(skip),
        };
        assert_eq!(loaded("image/png", 3).describe(), None);
        assert_eq!(loaded("image/png", 3).data_url().as_deref(), Some("data:image/png;base64,AAAA"));
        assert_eq!(loaded("application/pdf", 120_000).describe().unwrap(), "[an attachment: application/pdf, 120 kB]");
        assert_eq!(loaded("text/vcard", 1_400_000).describe().unwrap(), "[an attachment: text/vcard, 1.4 MB]");
        let big = skipped("image/jpeg", Skip::TooLarge { limit: 5 });
        assert_eq!(big.describe().unwrap(), "[a photo could not be loaded]");
        assert_eq!(big.skip_line().unwrap(), "MediaUrl1 (image/jpeg): over the 5-byte media limit");
        let odd = skipped("application/x-msdownload", Skip::TypeNotAllowed("application/x-msdownload".into()));
        assert_eq!(odd.describe().unwrap(), "[an attachment of type application/x-msdownload, not opened]");
        assert!(odd.data_url().is_none());
        let flaky = skipped("audio/amr", Skip::Unavailable { detail: "x".into(), transient: true, retry_after: None });
        assert_eq!(flaky.transient(), Some(None));
        assert_eq!(flaky.describe().unwrap(), "[an attachment (audio/amr) could not be loaded]");
    }
}
