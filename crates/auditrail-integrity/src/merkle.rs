//! The Merkle tree of RFC 9162 (Certificate Transparency 2.0), section 2.1.
//!
//! A tree over `n` leaves has the root `MTH(D[n])`: the leaf hash
//! `SHA-256(0x00 ‖ entry)` for one leaf, else `SHA-256(0x01 ‖ MTH(D[0:k]) ‖
//! MTH(D[k:n]))` with `k` the largest power of two below `n`. Every subtree
//! that appears in that recursion starts at a multiple of its own (rounded
//! up) size, so every node can be named by its *level* (0 for leaves) and
//! its index within the level; a [`NodeSource`] answers for the *complete*
//! nodes (those covering `2^level` leaves), and everything else here is
//! computed from them.
//!
//! Proofs follow the RFC exactly (2.1.3 inclusion, 2.1.4 consistency), so
//! any RFC 9162 verifier accepts them, and ours accepts theirs.

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The root of the tree with no leaves: the hash of the empty string.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// `SHA-256(0x00 ‖ entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(entry);
    hasher.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// Where proofs find the hashes of complete nodes.
pub trait NodeSource {
    type Error;
    /// The hash of the complete node at `level` and `index`: the root of
    /// leaves `index << level .. (index + 1) << level`.
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error>;
}

/// The root of leaves `start..end` (`start < end`), where `start` is a
/// multiple of the largest power of two not above `end - start`: the
/// subtrees RFC 9162's recursion names.
pub fn range_root<S: NodeSource>(source: &S, start: u64, end: u64) -> Result<Hash, S::Error> {
    debug_assert!(start < end);
    let width = end - start;
    if width.is_power_of_two() {
        let level = width.trailing_zeros() as u8;
        return source.node(level, start >> level);
    }
    let k = split_point(width);
    let left = range_root(source, start, start + k)?;
    let right = range_root(source, start + k, end)?;
    Ok(node_hash(&left, &right))
}

/// `MTH(D[size])`.
pub fn root<S: NodeSource>(source: &S, size: u64) -> Result<Hash, S::Error> {
    if size == 0 {
        return Ok(empty_root());
    }
    range_root(source, 0, size)
}

/// RFC 9162 2.1.3.1: the audit path of leaf `index` in the tree of `size`
/// leaves, from the leaf's sibling upwards.
pub fn inclusion_proof<S: NodeSource>(
    source: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, S::Error> {
    assert!(index < size, "leaf {index} is not in a tree of {size}");
    let mut path = Vec::new();
    // Walk down from the root, collecting siblings top-down; reversed below.
    let (mut start, mut end) = (0, size);
    while end - start > 1 {
        let k = split_point(end - start);
        if index < start + k {
            path.push(range_root(source, start + k, end)?);
            end = start + k;
        } else {
            path.push(range_root(source, start, start + k)?);
            start += k;
        }
    }
    path.reverse();
    Ok(path)
}

/// RFC 9162 2.1.4.1: the proof that the tree of `new_size` leaves extends
/// the tree of `old_size` (`0 < old_size <= new_size`).
pub fn consistency_proof<S: NodeSource>(
    source: &S,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, S::Error> {
    assert!(0 < old_size && old_size <= new_size);
    let mut proof = Vec::new();
    // SUBPROOF(m, D[start:end], complete), unrolled: each step appends the
    // hash of the side it does not descend into; collected top-down.
    let (mut m, mut start, mut end, mut complete) = (old_size, 0, new_size, true);
    loop {
        let n = end - start;
        if m == n {
            if !complete {
                proof.push(range_root(source, start, end)?);
            }
            break;
        }
        let k = split_point(n);
        if m <= k {
            proof.push(range_root(source, start + k, end)?);
            end = start + k;
        } else {
            proof.push(range_root(source, start, start + k)?);
            start += k;
            m -= k;
            complete = false;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// Why a proof does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is not below the tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("the proof has {got} hashes, a tree of this size needs {want}")]
    WrongLength { got: usize, want: usize },
    #[error("the old tree size {old} is larger than the new tree size {new}")]
    SizesOutOfOrder { old: u64, new: u64 },
    #[error("the proof leads to root {computed}, not the checkpoint's root {expected}")]
    RootMismatch { computed: String, expected: String },
}

fn mismatch(computed: &Hash, expected: &Hash) -> ProofError {
    ProofError::RootMismatch {
        computed: hex::encode(computed),
        expected: hex::encode(expected),
    }
}

/// RFC 9162 2.1.3.2: checks that `leaf` is leaf `index` of the tree of
/// `size` leaves whose root is `root`.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    path: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if s_n == 0 {
            return Err(too_long(path.len(), index, size));
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(ProofError::WrongLength {
            got: path.len(),
            want: inclusion_len(index, size),
        });
    }
    if &r != root {
        return Err(mismatch(&r, root));
    }
    Ok(())
}

fn too_long(got: usize, index: u64, size: u64) -> ProofError {
    ProofError::WrongLength {
        got,
        want: inclusion_len(index, size),
    }
}

/// How many hashes the audit path of leaf `index` in a tree of `size` has.
fn inclusion_len(index: u64, size: u64) -> usize {
    let (mut start, mut end, mut len) = (0, size, 0);
    while end - start > 1 {
        let k = split_point(end - start);
        if index < start + k {
            end = start + k;
        } else {
            start += k;
        }
        len += 1;
    }
    len
}

/// RFC 9162 2.1.4.2: checks that the tree of `new_size` leaves with root
/// `new_root` extends the tree of `old_size` leaves with root `old_root`.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizesOutOfOrder {
            old: old_size,
            new: new_size,
        });
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength {
                got: proof.len(),
                want: 0,
            });
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(mismatch(new_root, old_root))
        };
    }
    if old_size == 0 {
        // The empty tree is a prefix of every tree; RFC 9162 defines no
        // proof for it, and none is needed.
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::WrongLength {
                got: proof.len(),
                want: 0,
            })
        };
    }
    let mut proof = proof.iter();
    // Step 2: when old_size is a power of two, its root is the proof's
    // implicit first element.
    let (mut fr, mut sr);
    let first = if old_size.is_power_of_two() {
        *old_root
    } else {
        match proof.next() {
            Some(h) => *h,
            None => return Err(ProofError::WrongLength { got: 0, want: 1 }),
        }
    };
    let rest: Vec<&Hash> = proof.collect();
    let want_len = consistency_len(old_size, new_size);
    let got_len = rest.len() + usize::from(!old_size.is_power_of_two());
    if got_len != want_len {
        return Err(ProofError::WrongLength {
            got: got_len,
            want: want_len,
        });
    }
    let (mut f_n, mut s_n) = (old_size - 1, new_size - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    fr = first;
    sr = first;
    for c in rest {
        if s_n == 0 {
            return Err(ProofError::WrongLength {
                got: got_len,
                want: want_len,
            });
        }
        if f_n & 1 == 1 || f_n == s_n {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(ProofError::WrongLength {
            got: got_len,
            want: want_len,
        });
    }
    if &fr != old_root {
        return Err(mismatch(&fr, old_root));
    }
    if &sr != new_root {
        return Err(mismatch(&sr, new_root));
    }
    Ok(())
}

/// How many hashes the consistency proof from `old_size` to `new_size` has.
fn consistency_len(old_size: u64, new_size: u64) -> usize {
    let (mut m, mut start, mut end, mut complete, mut len) = (old_size, 0, new_size, true, 0);
    loop {
        let n = end - start;
        if m == n {
            return len + usize::from(!complete);
        }
        let k = split_point(n);
        if m <= k {
            end = start + k;
        } else {
            start += k;
            m -= k;
            complete = false;
        }
        len += 1;
    }
}

/// The right edge of a growing tree: the roots of its complete subtrees,
/// largest first, which is all that appending a leaf needs. Appending
/// yields every complete node it finishes, so a store can keep them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// `(level, hash)` of the complete subtrees left to right (decreasing
    /// levels): one per set bit of `size`.
    peaks: Vec<(u8, Hash)>,
}

impl Frontier {
    /// The frontier of a tree of `size` leaves whose peaks are `peaks`
    /// (as [`Frontier::peaks`] returned them).
    pub fn from_peaks(size: u64, peaks: Vec<Hash>) -> Option<Frontier> {
        if peaks.len() != size.count_ones() as usize {
            return None;
        }
        let levels = (0..64u8).rev().filter(|l| size >> l & 1 == 1);
        Some(Frontier {
            size,
            peaks: levels.zip(peaks).collect(),
        })
    }

    /// The frontier of a tree of `size` leaves, from stored nodes.
    pub fn load<S: NodeSource>(source: &S, size: u64) -> Result<Frontier, S::Error> {
        let mut peaks = Vec::new();
        let mut start = 0;
        for level in (0..64u8).rev() {
            if size >> level & 1 == 1 {
                peaks.push((level, source.node(level, start >> level)?));
                start += 1 << level;
            }
        }
        Ok(Frontier { size, peaks })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The peaks' hashes, largest subtree first.
    pub fn peaks(&self) -> Vec<Hash> {
        self.peaks.iter().map(|(_, h)| *h).collect()
    }

    /// Appends a leaf; calls `finished(level, index, hash)` for the leaf
    /// itself (level 0) and for each complete node it completes.
    pub fn push(&mut self, leaf: Hash, mut finished: impl FnMut(u8, u64, &Hash)) {
        let index = self.size;
        finished(0, index, &leaf);
        let mut node = (0u8, leaf);
        while let Some(&(level, left)) = self.peaks.last() {
            if level != node.0 {
                break;
            }
            self.peaks.pop();
            let parent = (level + 1, node_hash(&left, &node.1));
            finished(parent.0, index >> parent.0, &parent.1);
            node = parent;
        }
        self.peaks.push(node);
        self.size += 1;
    }

    /// `MTH(D[size])`: the peaks folded right to left.
    pub fn root(&self) -> Hash {
        let mut peaks = self.peaks.iter().rev();
        match peaks.next() {
            None => empty_root(),
            Some((_, last)) => peaks.fold(*last, |acc, (_, left)| node_hash(left, &acc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::convert::Infallible;

    /// RFC 9162's definition, straight from the text, over leaf entries.
    fn reference_root(entries: &[Vec<u8>]) -> Hash {
        match entries.len() {
            0 => empty_root(),
            1 => leaf_hash(&entries[0]),
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(
                    &reference_root(&entries[..k]),
                    &reference_root(&entries[k..]),
                )
            }
        }
    }

    /// Every complete node, as a store would keep them.
    struct Store(HashMap<(u8, u64), Hash>);

    impl NodeSource for Store {
        type Error = Infallible;
        fn node(&self, level: u8, index: u64) -> Result<Hash, Infallible> {
            Ok(*self.0.get(&(level, index)).expect("complete node stored"))
        }
    }

    fn build(entries: &[Vec<u8>]) -> (Store, Frontier) {
        let mut store = HashMap::new();
        let mut frontier = Frontier::default();
        for e in entries {
            frontier.push(leaf_hash(e), |l, i, h| {
                store.insert((l, i), *h);
            });
        }
        (Store(store), frontier)
    }

    fn entries(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("entry {i}").into_bytes()).collect()
    }

    #[test]
    fn known_roots() {
        // The empty root is SHA-256("").
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // One leaf: SHA-256(0x00 ‖ entry).
        let mut one = vec![0u8];
        one.extend_from_slice(b"a");
        let want: Hash = Sha256::digest(&one).into();
        let (store, frontier) = build(&[b"a".to_vec()]);
        assert_eq!(frontier.root(), want);
        assert_eq!(root(&store, 1).unwrap(), want);
    }

    #[test]
    fn inclusion_proof_of_rfc_shape() {
        // RFC 9162 2.1.5's example tree of 7 leaves: the path of leaf d
        // (index 3) is [c, g, l] = [leaf 2, node(0..2), node(4..7)].
        let e = entries(7);
        let (store, frontier) = build(&e);
        let path = inclusion_proof(&store, 3, 7).unwrap();
        assert_eq!(
            path,
            vec![
                leaf_hash(&e[2]),
                node_hash(&leaf_hash(&e[0]), &leaf_hash(&e[1])),
                reference_root(&e[4..7]),
            ]
        );
        verify_inclusion(3, 7, &leaf_hash(&e[3]), &path, &frontier.root()).unwrap();
    }

    #[test]
    fn consistency_proof_of_rfc_shape() {
        // RFC 9162 2.1.5: PROOF(3, D[7]) = [c, d, g, l].
        let e = entries(7);
        let (store, _) = build(&e);
        let proof = consistency_proof(&store, 3, 7).unwrap();
        assert_eq!(
            proof,
            vec![
                leaf_hash(&e[2]),
                leaf_hash(&e[3]),
                node_hash(&leaf_hash(&e[0]), &leaf_hash(&e[1])),
                reference_root(&e[4..7]),
            ]
        );
        // PROOF(4, D[7]) = [l].
        assert_eq!(
            consistency_proof(&store, 4, 7).unwrap(),
            vec![reference_root(&e[4..7])]
        );
    }

    proptest! {
        #[test]
        fn roots_match_the_definition(n in 0usize..300) {
            let e = entries(n);
            let (store, frontier) = build(&e);
            let want = reference_root(&e);
            prop_assert_eq!(frontier.root(), want);
            prop_assert_eq!(root(&store, n as u64).unwrap(), want);
            // A frontier rebuilt from the store or from its peaks is the same.
            prop_assert_eq!(&Frontier::load(&store, n as u64).unwrap(), &frontier);
            prop_assert_eq!(
                &Frontier::from_peaks(n as u64, frontier.peaks()).unwrap(),
                &frontier
            );
        }

        #[test]
        fn every_inclusion_proof_verifies_and_no_other(n in 1u64..200, pick in any::<u64>(), flip in any::<u64>()) {
            let e = entries(n as usize);
            let (store, _) = build(&e);
            let index = pick % n;
            // Older sizes are proved against too, as `prove` does.
            for size in [index + 1, n] {
                let r = root(&store, size).unwrap();
                let path = inclusion_proof(&store, index, size).unwrap();
                let leaf = leaf_hash(&e[index as usize]);
                prop_assert!(verify_inclusion(index, size, &leaf, &path, &r).is_ok());
                // Another leaf, another index, or a changed path all fail.
                let other = leaf_hash(b"forged");
                prop_assert!(verify_inclusion(index, size, &other, &path, &r).is_err());
                if size > 1 {
                    let wrong_index = (index + 1 + flip % (size - 1)) % size;
                    prop_assert!(verify_inclusion(wrong_index, size, &leaf, &path, &r).is_err());
                    let mut bad = path.clone();
                    let at = (flip as usize) % bad.len();
                    bad[at][0] ^= 1;
                    prop_assert!(verify_inclusion(index, size, &leaf, &bad, &r).is_err());
                    prop_assert!(verify_inclusion(index, size, &leaf, &path[1..], &r).is_err());
                }
            }
        }

        #[test]
        fn every_consistency_proof_verifies_and_no_other(n in 1u64..200, pick in any::<u64>(), flip in any::<u64>()) {
            let e = entries(n as usize);
            let (store, _) = build(&e);
            let m = 1 + pick % n;
            let (old, new) = (root(&store, m).unwrap(), root(&store, n).unwrap());
            let proof = consistency_proof(&store, m, n).unwrap();
            prop_assert!(verify_consistency(m, n, &old, &new, &proof).is_ok());
            // A rewritten history: one old leaf changed.
            let mut forged = e.clone();
            forged[(flip % m) as usize] = b"forged".to_vec();
            let (fstore, _) = build(&forged);
            let forged_new = root(&fstore, n).unwrap();
            let forged_proof = consistency_proof(&fstore, m, n).unwrap();
            prop_assert!(verify_consistency(m, n, &old, &forged_new, &forged_proof).is_err());
            if !proof.is_empty() {
                let mut bad = proof.clone();
                let at = (flip as usize) % bad.len();
                bad[at][31] ^= 0x80;
                prop_assert!(verify_consistency(m, n, &old, &new, &bad).is_err());
                prop_assert!(verify_consistency(m, n, &old, &new, &proof[1..]).is_err());
            }
        }
    }
}
