//! The command line. Names and flags follow docs/ARCHITECTURE.md §6, "CLI (contract)".

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "smsgate", version, about = "The smsgate operator's tool", max_term_width = 100)]
pub struct Cli {
    /// Where the admin API listens.
    #[arg(long, global = true, env = "SMSGATE_ADMIN_URL", default_value = "http://127.0.0.1:8001")]
    pub admin_url: String,
    /// The admin API's bearer token [default: the file ingress generated,
    /// see SMSGATE_ADMIN_TOKEN_FILE].
    #[arg(long, global = true, env = "SMSGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of a table (the admin API's answer as it came).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send a message through a channel (the sender delivers it).
    Send {
        #[arg(long)]
        channel: String,
        /// The recipient, E.164 (+14155550100).
        #[arg(long)]
        to: String,
        #[arg(long)]
        body: String,
        /// A media URL to attach (MMS): https on a public host, at most 10;
        /// repeat for more.
        #[arg(long = "media-url")]
        media_urls: Vec<String>,
        /// Sending twice with the same key sends once (within the duplicate window).
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Call a number and say a text (or play TwiML); the sender places the call.
    Call {
        #[arg(long)]
        channel: String,
        /// The number to call, E.164 (+14155550100).
        #[arg(long)]
        to: String,
        /// What to say when the call is answered.
        #[arg(long, required_unless_present = "twiml", conflicts_with = "twiml")]
        say: Option<String>,
        /// A TwiML document to play instead.
        #[arg(long)]
        twiml: Option<String>,
        /// Calling twice with the same key calls once (within the duplicate window).
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// List conversations, most recent first, one page at a time.
    Conversations {
        #[arg(long)]
        channel: Option<String>,
        /// Only numbers containing these digits.
        #[arg(long)]
        search: Option<String>,
        /// Conversations per page.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Start after this point (the `next` cursor a previous page printed).
        #[arg(long)]
        cursor: Option<String>,
        /// Every page, not just the first.
        #[arg(long, conflicts_with = "cursor")]
        all: bool,
    },
    /// Follow the live events (messages received, sent, delivered, skipped,
    /// takeovers, dead letters): one JSON line per event, until interrupted.
    /// Reconnects by itself and resumes where it was.
    Events {
        #[arg(long)]
        channel: Option<String>,
    },
    /// Show one conversation, oldest first, with delivery states.
    Conversation {
        #[arg(long)]
        channel: String,
        /// The other party's number, E.164.
        peer: String,
        /// Show at most this many of the latest entries.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Human takeover: stop the bot answering one conversation (inbound is
    /// still recorded; answer with `smsgate send`); it resumes on its own.
    Pause {
        #[arg(long)]
        channel: String,
        /// The other party's number, E.164.
        peer: String,
        /// How long (default: the channel's `pause_minutes`, 60).
        #[arg(long)]
        minutes: Option<f64>,
    },
    /// Hand a paused conversation back to the bot.
    Resume {
        #[arg(long)]
        channel: String,
        /// The other party's number, E.164.
        peer: String,
    },
    /// Sign a webhook exactly as Twilio would and post it to ingress.
    Simulate {
        /// The channel (may be left out when only one is configured).
        #[arg(long)]
        channel: Option<String>,
        /// The texting phone, E.164.
        #[arg(long)]
        from: String,
        #[arg(long)]
        body: String,
        /// Where to post: a base (http://127.0.0.1:8000) or the full webhook URL.
        /// Default: http://127.0.0.1:<port of SMSGATE_INGRESS_ADDR> and the webhook path.
        #[arg(long)]
        url: Option<String>,
        /// The channel's number to text (default: the channel's from number).
        #[arg(long)]
        to: Option<String>,
        /// Use this MessageSid instead of a random one (to try a redelivery).
        #[arg(long)]
        message_sid: Option<String>,
        /// A media URL, as an MMS would carry; repeat for more. The worker
        /// fetches only this message's media on the channel's Twilio API
        /// base; any other URL is described to the model, never fetched.
        #[arg(long = "media-url")]
        media_urls: Vec<String>,
    },
    /// Validate a channel file (default: SMSGATE_CHANNELS, else the TWILIO_* variables).
    CheckConfig { file: Option<PathBuf> },
    /// Print a fresh random token (webhook path token, admin token).
    GenToken {
        /// Print a fresh SMSGATE_SECRET_KEY instead (32 random bytes, base64):
        /// it encrypts the secrets of channels connected at run time.
        #[arg(long)]
        secret_key: bool,
    },
    /// Print the webhook URL to paste into Twilio's console.
    WebhookUrl {
        /// The channel (may be left out when only one is configured).
        #[arg(long)]
        channel: Option<String>,
        /// The URL for the number's "A call comes in" instead.
        #[arg(long)]
        voice: bool,
    },
    /// List channels with their health, from the running ingress; connect,
    /// disconnect and check channels at run time.
    Channels {
        #[command(subcommand)]
        command: Option<ChannelsCommand>,
    },
    /// Dead letters: what could not be processed.
    Dead {
        #[command(subcommand)]
        command: DeadCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ChannelsCommand {
    /// Connect the channel(s) of a channel file without a restart. `${VAR}`
    /// is read from this command's environment; the secrets are stored
    /// encrypted with the services' SMSGATE_SECRET_KEY.
    Connect {
        file: PathBuf,
        /// Also point the number's SMS webhook at smsgate in Twilio (URL and POST).
        #[arg(long)]
        set_webhook: bool,
    },
    /// Disconnect a channel connected at run time (file channels are read-only).
    Disconnect { channel_id: String },
    /// Ask Twilio about a channel: credentials, the number, its webhooks
    /// against smsgate's. Exit 1 unless all is well.
    Status { channel_id: String },
}

#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// List dead letters, oldest first.
    List {
        #[arg(long)]
        channel: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Publish a dead letter's original again and remove it from the list.
    Replay { seq: u64 },
}
