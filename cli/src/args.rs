//! The command line. Names and flags follow docs/ARCHITECTURE.md §6, "CLI (contract)".

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "smsgate", version, about = "The smsgate operator's tool", max_term_width = 100)]
pub struct Cli {
    /// Print JSON instead of a table (the admin API's answer as it came).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the admin API is and how to sign in: only on the commands that
/// use it (`check-config` and `gen-token` never do).
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Where the admin API listens.
    #[arg(long, global = true, env = "SMSGATE_ADMIN_URL", default_value = "http://127.0.0.1:8001")]
    pub admin_url: String,
    /// The admin API's bearer token [default: the file ingress generated,
    /// see SMSGATE_ADMIN_TOKEN_FILE].
    #[arg(long, global = true, env = "SMSGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send a message through a channel (the sender delivers it).
    Send {
        /// The channel to send through.
        #[arg(long)]
        channel: String,
        /// The recipient, E.164 (+14155550100).
        #[arg(long)]
        to: String,
        /// The text to send.
        #[arg(long)]
        body: String,
        /// A media URL to attach (MMS): https on a public host, at most 10;
        /// repeat for more.
        #[arg(long = "media-url")]
        media_urls: Vec<String>,
        /// Sending twice with the same key sends once (within the duplicate window).
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Send later: an RFC 3339 time (2026-12-07T09:00:00-05:00) or a
        /// delay from now (30m, 2h, 1d). The guard checks it again then.
        #[arg(long)]
        at: Option<String>,
        /// What the text is for: conversational, informational or marketing
        /// (marketing needs written consent on record).
        #[arg(long)]
        purpose: Option<String>,
        /// Outside the recipient's allowed hours, refuse (with the next
        /// allowed time) instead of deferring.
        #[arg(long)]
        no_defer: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Texts and calls waiting to go out (scheduled, or deferred by the
    /// guard to the recipient's allowed hours); `cancel ID` cancels one.
    Scheduled {
        #[command(subcommand)]
        command: Option<ScheduledCommand>,
        /// Only this channel's.
        #[arg(long)]
        channel: Option<String>,
        /// Only those to this number.
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Consent on record for a number: add, revoke (an opt-out until the
    /// number texts START) or show.
    Consent {
        #[command(subcommand)]
        command: ConsentCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Call a number and say a text (--say) or play TwiML (--twiml); the
    /// sender places the call.
    #[command(group(ArgGroup::new("what").required(true).args(["say", "twiml"])))]
    Call {
        /// The channel whose number calls.
        #[arg(long)]
        channel: String,
        /// The number to call, E.164 (+14155550100).
        #[arg(long)]
        to: String,
        /// What to say when the call is answered.
        #[arg(long)]
        say: Option<String>,
        /// A TwiML document to play instead of --say.
        #[arg(long)]
        twiml: Option<String>,
        /// Calling twice with the same key calls once (within the duplicate window).
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List conversations, most recent first, one page at a time.
    Conversations {
        /// Only this channel's conversations.
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
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Follow the live events (messages received, sent, delivered, skipped,
    /// takeovers, dead letters): one JSON line per event, each with its
    /// stream position as `event_id`, until interrupted. Reconnects by
    /// itself and resumes where it was.
    Events {
        /// Only this channel's events.
        #[arg(long)]
        channel: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Serve MCP on stdin/stdout (for a desktop MCP client): the tools of
    /// the admin listener's /mcp, reached with this CLI's token.
    Mcp {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show one conversation, oldest first, with delivery states.
    Conversation {
        /// The channel of the conversation.
        #[arg(long)]
        channel: String,
        /// The other party's number, E.164.
        peer: String,
        /// Show at most this many of the latest entries.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Human takeover: stop the bot answering one conversation (inbound is
    /// still recorded; answer with `smsgate send`); it resumes on its own.
    Pause {
        /// The channel of the conversation.
        #[arg(long)]
        channel: String,
        /// The other party's number, E.164.
        peer: String,
        /// How long (default: the channel's `pause_minutes`, 60).
        #[arg(long)]
        minutes: Option<f64>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Hand a paused conversation back to the bot.
    Resume {
        /// The channel of the conversation.
        #[arg(long)]
        channel: String,
        /// The other party's number, E.164.
        peer: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Sign a webhook exactly as Twilio would and post it to ingress. A
    /// channel of the configuration is signed here; a channel connected at
    /// run time is signed by the admin API (which holds its auth token).
    Simulate {
        /// The channel (may be left out when only one is configured).
        #[arg(long)]
        channel: Option<String>,
        /// The texting phone, E.164.
        #[arg(long)]
        from: String,
        /// The text of the SMS.
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
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Validate a channel file (default: SMSGATE_CHANNELS, else the TWILIO_* variables).
    CheckConfig {
        /// The channel file to check instead of SMSGATE_CHANNELS.
        file: Option<PathBuf>,
    },
    /// Print a fresh random token (webhook path token, admin token).
    GenToken {
        /// Print a fresh SMSGATE_SECRET_KEY instead (32 random bytes, base64):
        /// it encrypts the secrets of channels connected at run time.
        #[arg(long)]
        secret_key: bool,
    },
    /// Print the webhook URL to paste into Twilio's console (a channel
    /// connected at run time: asked from the admin API).
    WebhookUrl {
        /// The channel (may be left out when only one is configured).
        #[arg(long)]
        channel: Option<String>,
        /// The URL for the number's "A call comes in" instead.
        #[arg(long)]
        voice: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List channels with their health, from the running ingress; connect,
    /// disconnect and check channels at run time.
    Channels {
        #[command(subcommand)]
        command: Option<ChannelsCommand>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Dead letters: what could not be processed.
    Dead {
        #[command(subcommand)]
        command: DeadCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

impl Command {
    /// The admin API flags of a command that uses the admin API.
    pub fn admin(&self) -> Option<&AdminArgs> {
        match self {
            Self::Send { admin, .. }
            | Self::Call { admin, .. }
            | Self::Conversations { admin, .. }
            | Self::Events { admin, .. }
            | Self::Mcp { admin }
            | Self::Conversation { admin, .. }
            | Self::Pause { admin, .. }
            | Self::Resume { admin, .. }
            | Self::Simulate { admin, .. }
            | Self::WebhookUrl { admin, .. }
            | Self::Channels { admin, .. }
            | Self::Dead { admin, .. }
            | Self::Scheduled { admin, .. }
            | Self::Consent { admin, .. } => Some(admin),
            Self::CheckConfig { .. } | Self::GenToken { .. } => None,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ChannelsCommand {
    /// Connect the channel(s) of a channel file without a restart. `${VAR}`
    /// is read from this command's environment; the secrets are stored
    /// encrypted with the services' SMSGATE_SECRET_KEY.
    Connect {
        /// The channel file (one channel, a list, or {"channels": [...]}).
        file: PathBuf,
        /// Also point the number's SMS webhook at smsgate in Twilio (URL and POST).
        #[arg(long)]
        set_webhook: bool,
    },
    /// Disconnect a channel connected at run time (file channels are read-only).
    Disconnect {
        /// The channel to disconnect.
        channel_id: String,
    },
    /// Ask Twilio about a channel: credentials, the number, its webhooks
    /// against smsgate's (a `"delivery": "log"` channel: not asked). Exit 1
    /// unless all is well.
    Status {
        /// The channel to check.
        channel_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ScheduledCommand {
    /// Cancel a scheduled text or call before it goes out.
    Cancel {
        /// Its id (from `smsgate scheduled`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConsentCommand {
    /// Record a number's consent.
    Add {
        /// The channel the consent is for.
        #[arg(long)]
        channel: String,
        /// The number, E.164.
        peer: String,
        /// express (informational texts, AI calls) or written (marketing too).
        #[arg(long, default_value = "express")]
        kind: String,
        /// Where it was given ("web form", "signed agreement 2026-11-02").
        #[arg(long)]
        source: String,
        /// A reference to the proof (a form id, a document).
        #[arg(long)]
        evidence: Option<String>,
    },
    /// Revoke it: the number is opted out until it texts START.
    Revoke {
        /// The channel.
        #[arg(long)]
        channel: String,
        /// The number, E.164.
        peer: String,
    },
    /// Show the consent and opt-out state.
    Show {
        /// The channel.
        #[arg(long)]
        channel: String,
        /// The number, E.164.
        peer: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// List dead letters, oldest first.
    List {
        /// Only this channel's dead letters.
        #[arg(long)]
        channel: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Publish a dead letter's original again and remove it from the list.
    Replay {
        /// The dead letter's SEQ (from `smsgate dead list`).
        seq: u64,
    },
}
