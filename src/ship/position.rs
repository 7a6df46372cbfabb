//! The worker's position in its brick's journal, and whether it still means what it meant.
//!
//! Invariant: the index's `journal_seq` is trusted only while the journal has the identity the
//! index recorded with it and still holds, at that position, the record the index saw there;
//! otherwise the caller crawls (a journal that went back or was replaced would skip records).

use crate::crawl::index::Index;
use crate::journal::JournalStore;
use anyhow::Result;

/// Index metadata: why a crawl is owed whatever the journal says (the slave was recreated and
/// the index emptied: what the journal no longer holds must be found by a crawl). Cleared by
/// the hybrid crawl that pays it.
pub const CRAWL_DUE: &str = "crawl_due";

/// Records in the index that everything up to journal record `seq` is on the slave, with what
/// identifies that position: the journal's identity and the record's time.
pub(super) fn set_position(index: &Index, journal: &JournalStore, seq: u64) -> Result<()> {
    let anchor = journal
        .ts_at(seq)?
        .map(|t| t.to_string())
        .unwrap_or_default();
    // Any order is safe: a crash between these leaves a position that does not match, which
    // costs one hybrid crawl.
    index.set_meta("journal_seq", &seq.to_string())?;
    index.set_meta("journal_anchor_ts", &anchor)?;
    index.set_meta("journal_id", journal.id())?;
    Ok(())
}

/// The index's position in the journal: every record up to it is on the slave (0: none).
pub(super) fn journal_seq(index: &Index) -> Result<u64> {
    Ok(index
        .get_meta("journal_seq")?
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(0))
}

/// Why the index's position in the journal no longer means what it meant, if it does not: the
/// journal was replaced (another identity), or went back (a lost WAL tail after a power loss,
/// an older copy restored) so that its records are numbered again below the position, or the
/// record at the position is not the one the index saw. Records after such a position would be
/// skipped, and a restart GAP among them never seen: the caller crawls instead.
pub(super) fn position_lost(index: &Index, journal: &JournalStore) -> Result<Option<String>> {
    if let Some(why) = index.get_meta(CRAWL_DUE)?.filter(|w| !w.is_empty()) {
        return Ok(Some(why));
    }
    let seq = journal_seq(index)?;
    if seq == 0 {
        return Ok(None);
    }
    if let Some(id) = index.get_meta("journal_id")?.filter(|i| !i.is_empty()) {
        if id != journal.id() {
            return Ok(Some(format!(
                "journal.db is not the journal the index followed (identity {} instead of {id}): it was deleted or replaced",
                journal.id()
            )));
        }
    }
    let last = journal.last_seq()?;
    if last < seq {
        return Ok(Some(format!(
            "journal.db went back: it ends at record {last}, the index had reached {seq} (a lost tail after a power loss, or an older copy)"
        )));
    }
    let Some(anchor) = index
        .get_meta("journal_anchor_ts")?
        .filter(|a| !a.is_empty())
    else {
        // Written by an older georep: nothing to compare yet.
        return Ok(None);
    };
    match journal.ts_at(seq)? {
        Some(ts) if ts.to_string() == anchor => Ok(None),
        found => Ok(Some(format!(
            "journal.db went back and was renumbered: record {seq} is {} where the index saw one of {anchor}",
            found.map_or("missing".to_string(), |t| format!("one of {t}"))
        ))),
    }
}
