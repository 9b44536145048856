//! Leveled compaction: [`pick`] is a pure function from the tree's shape to a task; the
//! worker ([`run`]) merges the task's tables into new ones. The engine installs the result
//! in a new version and manifest, then deletes the inputs.
//!
//! Invariants kept:
//! - For any key, a version in level i is newer than any version in level i+1 (L0 is
//!   compacted whole, so newer L0 tables never sit below older data).
//! - Tables of L1.. have disjoint user-key ranges: all versions of a key go to one table.
//! - Versions still visible to a live snapshot (ts > watermark, and the newest at or below
//!   it) are kept; tombstones and expired entries are dropped only when nothing below the
//!   output level could hold an older version of the key.

use std::sync::Arc;

use crate::entry::Record;
use crate::iter::{Bounds, Merge, RunSource, Source};
use crate::table::{Table, TableBuilder, TableMeta};
use crate::version::NUM_LEVELS;
use crate::{Error, Result};

/// The shape parameters compaction decisions depend on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub(crate) l0_trigger: usize,
    pub(crate) base_level_size: u64,
    pub(crate) multiplier: u64,
}

/// What to compact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Task {
    /// Level the inputs come from.
    pub(crate) level: usize,
    /// Input tables of `level`.
    pub(crate) inputs: Vec<u64>,
    /// Overlapping tables of `level + 1`.
    pub(crate) next_inputs: Vec<u64>,
    /// Level the outputs go to: `level + 1`, or `level` itself for a rekey rewrite.
    pub(crate) output_level: usize,
    /// No level below `level + 1` overlaps the inputs: tombstones may be dropped.
    pub(crate) bottom: bool,
    /// One input, nothing overlapping below: the table can be moved without rewriting.
    pub(crate) trivial_move: bool,
}

fn overlaps(t: &TableMeta, lo: &[u8], hi: &[u8]) -> bool {
    t.smallest.as_slice() <= hi && t.largest.as_slice() >= lo
}

fn level_target(p: &Policy, level: usize) -> u64 {
    p.base_level_size
        .saturating_mul(p.multiplier.saturating_pow(level.saturating_sub(1) as u32))
}

/// Chooses the next compaction, if any level is over its budget.
pub(crate) fn pick(levels: &[Vec<TableMeta>], p: &Policy) -> Option<Task> {
    if levels[0].len() >= p.l0_trigger.max(1) {
        return Some(make_task(levels, 0, levels[0].iter().collect()));
    }
    let mut best: Option<(f64, usize)> = None;
    for (level, tables) in levels.iter().enumerate().take(NUM_LEVELS - 1).skip(1) {
        let size: u64 = tables.iter().map(|t| t.size).sum();
        let score = size as f64 / level_target(p, level) as f64;
        if score > 1.0 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, level));
        }
    }
    let (_, level) = best?;
    // The table whose rewrite costs least per byte moved: smallest overlap with the next level.
    let next = &levels[level + 1];
    let input = levels[level].iter().min_by_key(|t| {
        let overlap: u64 = next
            .iter()
            .filter(|n| overlaps(n, &t.smallest, &t.largest))
            .map(|n| n.size)
            .sum();
        (overlap.saturating_mul(1024) / t.size.max(1), t.file_no)
    })?;
    Some(make_task(levels, level, vec![input]))
}

/// Chooses a table sealed under an old key (`is_old(key_id)`) to rewrite under the active key.
/// L1+ tables are rewritten in place (same level, same key range); an old L0 table is handled
/// by the normal L0 compaction, since a rewritten L0 table would look newer than it is.
pub(crate) fn pick_rekey(levels: &[Vec<TableMeta>], is_old: &dyn Fn(u32) -> bool) -> Option<Task> {
    let old = |t: &TableMeta| is_old(t.key_id);
    if levels[0].iter().any(old) {
        return Some(make_task(levels, 0, levels[0].iter().collect()));
    }
    for (level, tables) in levels.iter().enumerate().skip(1) {
        if let Some(t) = tables.iter().find(|t| old(t)) {
            let bottom = levels[level + 1..]
                .iter()
                .flatten()
                .all(|n| !overlaps(n, &t.smallest, &t.largest));
            return Some(Task {
                level,
                inputs: vec![t.file_no],
                next_inputs: Vec::new(),
                output_level: level,
                bottom,
                trivial_move: false,
            });
        }
    }
    None
}

/// The next step of a full compaction (`Db::flatten`): L0 into L1 while L0 has tables, then
/// the shallowest level that still has data below it. `None` once all data is in one level.
pub(crate) fn pick_flatten(levels: &[Vec<TableMeta>]) -> Option<Task> {
    let level = (0..NUM_LEVELS - 1).find(|&l| {
        !levels[l].is_empty() && (l == 0 || levels[l + 1..].iter().any(|m| !m.is_empty()))
    })?;
    Some(make_task(levels, level, levels[level].iter().collect()))
}

fn make_task(levels: &[Vec<TableMeta>], level: usize, inputs: Vec<&TableMeta>) -> Task {
    let lo = inputs
        .iter()
        .map(|t| t.smallest.as_slice())
        .min()
        .unwrap_or_default();
    let hi = inputs
        .iter()
        .map(|t| t.largest.as_slice())
        .max()
        .unwrap_or_default();
    let next_inputs: Vec<u64> = levels[level + 1]
        .iter()
        .filter(|t| overlaps(t, lo, hi))
        .map(|t| t.file_no)
        .collect();
    let bottom = levels[level + 2..]
        .iter()
        .flatten()
        .all(|t| !overlaps(t, lo, hi));
    Task {
        level,
        output_level: level + 1,
        trivial_move: inputs.len() == 1 && next_inputs.is_empty() && level > 0,
        inputs: inputs.iter().map(|t| t.file_no).collect(),
        next_inputs,
        bottom,
    }
}

/// What the worker needs besides the inputs.
pub(crate) struct Output<'a> {
    pub(crate) new_table: &'a mut dyn FnMut() -> Result<TableBuilder>,
    pub(crate) bits_per_key: usize,
    pub(crate) target_file_size: u64,
    pub(crate) watermark: u64,
    pub(crate) now: u64,
    /// Polled now and then; when it returns true the merge stops with [`Error::Closed`]
    /// (the caller removes partial outputs).
    pub(crate) cancelled: &'a dyn Fn() -> bool,
    /// Told of every version the merge drops (value-log discard statistics).
    pub(crate) dropped: &'a mut dyn FnMut(&Record),
}

/// Whole tables, forward, without filling the block cache.
fn uncached() -> Bounds {
    Bounds {
        lower: None,
        upper: None,
        reverse: false,
        fill_cache: false,
    }
}

/// Merges the input tables (L0 tables are runs of one; a level is one run) into new tables.
pub(crate) fn run(
    level_inputs: Vec<Arc<Table>>,
    level: usize,
    next_inputs: Vec<Arc<Table>>,
    bottom: bool,
    out: Output<'_>,
) -> Result<Vec<TableMeta>> {
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    if level == 0 {
        for t in level_inputs {
            sources.push(Box::new(RunSource::new(vec![t], uncached())?));
        }
    } else {
        sources.push(Box::new(RunSource::new(level_inputs, uncached())?));
    }
    if !next_inputs.is_empty() {
        sources.push(Box::new(RunSource::new(next_inputs, uncached())?));
    }
    let mut merge = Merge::new(sources, false);
    let mut outputs = Vec::new();
    let mut builder: Option<TableBuilder> = None;
    let mut group_key: Option<Vec<u8>> = None;
    let mut seen_visible = false;
    let mut n = 0u64;
    while let Some(r) = merge.next_record()? {
        n += 1;
        if n.is_multiple_of(4096) && (out.cancelled)() {
            return Err(Error::Closed);
        }
        let new_key = group_key.as_deref() != Some(r.key.as_slice());
        if new_key {
            seen_visible = false;
            // Split only between user keys, so levels keep disjoint key ranges.
            if let Some(b) = &builder {
                if b.estimated_size() >= out.target_file_size {
                    let b = builder.take().expect("checked");
                    outputs.push(b.finish(out.bits_per_key)?);
                }
            }
            group_key = Some(r.key.clone());
        }
        if !keep(&r, &mut seen_visible, bottom, out.watermark, out.now) {
            (out.dropped)(&r);
            continue;
        }
        if builder.is_none() {
            builder = Some((out.new_table)()?);
        }
        builder.as_mut().expect("set").add(r.as_ref())?;
    }
    if let Some(b) = builder {
        if !b.is_empty() {
            outputs.push(b.finish(out.bits_per_key)?);
        }
    }
    Ok(outputs)
}

/// The retention rule for one version, seen in internal order within its key.
fn keep(r: &Record, seen_visible: &mut bool, bottom: bool, watermark: u64, now: u64) -> bool {
    if r.ts > watermark {
        return true;
    }
    if *seen_visible {
        return false;
    }
    *seen_visible = true;
    !bottom || r.is_live(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(no: u64, lo: &str, hi: &str, size: u64) -> TableMeta {
        TableMeta {
            file_no: no,
            size,
            key_id: 0,
            entries: 1,
            smallest: lo.as_bytes().to_vec(),
            largest: hi.as_bytes().to_vec(),
            max_ts: 1,
        }
    }

    const P: Policy = Policy {
        l0_trigger: 2,
        base_level_size: 100,
        multiplier: 10,
    };

    #[test]
    fn l0_compacts_whole_with_overlapping_l1() {
        let mut levels = vec![Vec::new(); NUM_LEVELS];
        levels[0] = vec![meta(5, "c", "f", 10), meta(4, "a", "d", 10)];
        levels[1] = vec![
            meta(1, "a", "b", 10),
            meta(2, "e", "g", 10),
            meta(3, "x", "z", 10),
        ];
        let t = pick(&levels, &P).unwrap();
        assert_eq!(t.level, 0);
        assert_eq!(t.inputs, vec![5, 4]);
        assert_eq!(t.next_inputs, vec![1, 2]);
        assert!(t.bottom && !t.trivial_move);
    }

    #[test]
    fn oversized_level_picks_least_overlap_and_knows_the_bottom() {
        let mut levels = vec![Vec::new(); NUM_LEVELS];
        levels[1] = vec![meta(1, "a", "c", 80), meta(2, "m", "p", 80)];
        levels[2] = vec![meta(3, "a", "b", 500)];
        levels[3] = vec![meta(4, "a", "a", 5)];
        let t = pick(&levels, &P).unwrap();
        assert_eq!(t.output_level, 2);
        assert_eq!((t.level, t.inputs.clone()), (1, vec![2]));
        assert!(t.trivial_move && t.bottom);
        levels[1].pop();
        assert_eq!(pick(&levels, &P), None);
    }

    #[test]
    fn rekey_rewrites_old_tables_in_place_and_old_l0_through_compaction() {
        let mut levels = vec![Vec::new(); NUM_LEVELS];
        let mut old = meta(7, "m", "p", 50);
        old.key_id = 1;
        let mut fresh = meta(8, "a", "c", 50);
        fresh.key_id = 2;
        levels[2] = vec![fresh.clone(), old];
        let old_before = |cutoff: u64| {
            move |id: u32| {
                [(1u32, 100u64), (2, 500)]
                    .iter()
                    .find(|(k, _)| *k == id)
                    .is_none_or(|(_, c)| *c < cutoff)
            }
        };
        let t = pick_rekey(&levels, &old_before(200)).unwrap();
        assert_eq!((t.level, t.output_level, t.inputs.clone()), (2, 2, vec![7]));
        assert!(t.bottom && !t.trivial_move);
        assert_eq!(pick_rekey(&levels, &old_before(50)), None);
        let mut l0 = meta(9, "x", "z", 5);
        l0.key_id = 1;
        levels[0] = vec![l0];
        let t = pick_rekey(&levels, &old_before(200)).unwrap();
        assert_eq!((t.level, t.output_level), (0, 1));
        // A key the registry no longer knows counts as old.
        levels[0].clear();
        levels[2][0].key_id = 99;
        assert_eq!(
            pick_rekey(&levels, &old_before(50)).unwrap().inputs,
            vec![8]
        );
    }

    #[test]
    fn flatten_ends_with_all_data_in_one_level() {
        let mut levels = vec![Vec::new(); NUM_LEVELS];
        levels[0] = vec![meta(9, "a", "z", 10)];
        levels[1] = vec![meta(1, "a", "c", 10)];
        levels[3] = vec![meta(2, "x", "y", 10)];
        let mut steps = 0;
        while let Some(t) = pick_flatten(&levels) {
            // Apply the task's shape: inputs and overlapping next-level tables move down.
            let moved: Vec<TableMeta> = levels[t.level]
                .iter()
                .chain(&levels[t.level + 1])
                .filter(|m| t.inputs.contains(&m.file_no) || t.next_inputs.contains(&m.file_no))
                .cloned()
                .collect();
            levels[t.level].retain(|m| !t.inputs.contains(&m.file_no));
            levels[t.level + 1].retain(|m| !t.next_inputs.contains(&m.file_no));
            levels[t.output_level].extend(moved);
            steps += 1;
            assert!(steps < 20, "flatten does not converge");
        }
        let non_empty: Vec<usize> = (0..NUM_LEVELS).filter(|l| !levels[*l].is_empty()).collect();
        assert_eq!(non_empty.len(), 1, "{levels:?}");
        assert_eq!(levels[non_empty[0]].len(), 3);
    }

    #[test]
    fn retention_keeps_snapshot_versions() {
        let rec = |ts, kind| Record {
            key: b"k".to_vec(),
            ts,
            kind,
            expires_at: 0,
            value: vec![],
        };
        use crate::entry::Kind::*;
        let mut seen = false;
        let kept: Vec<bool> = [rec(9, Put), rec(5, Delete), rec(3, Put), rec(1, Put)]
            .iter()
            .map(|r| keep(r, &mut seen, true, 6, 0))
            .collect();
        assert_eq!(kept, vec![true, false, false, false]);
        let mut seen = false;
        let kept: Vec<bool> = [rec(5, Delete), rec(3, Put)]
            .iter()
            .map(|r| keep(r, &mut seen, false, 6, 0))
            .collect();
        assert_eq!(kept, vec![true, false]);
    }
}
