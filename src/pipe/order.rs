//! Which items a host receives in an epoch, in which order (DESIGN §13). The rule, as README
//! documents it: the channel's items in their base order (objects sorted by URI, augmented
//! manifest lines as written); with `ShuffleConfig.Seed` S, epoch N shuffles them with the
//! seed S + N (the shuffle File mode uses, so epoch 0 is File mode's order and assignment);
//! with `ShardedByS3Key`, item i of that order goes to the i mod H-th of the H hosts the
//! channel serves, so a shuffled channel is re-sharded every epoch.

/// The indices (into the base order) host `host` of `hosts` receives in `epoch`, in order.
pub(crate) fn epoch_share(
    items: usize,
    hosts: usize,
    host: usize,
    sharded: bool,
    seed: Option<i64>,
    epoch: u64,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..items).collect();
    if let Some(seed) = seed {
        crate::stage::shuffle(&mut order, seed.wrapping_add(epoch as i64) as u64);
    }
    if sharded {
        let hosts = hosts.max(1);
        order.into_iter().enumerate().filter(|(i, _)| i % hosts == host).map(|(_, item)| item).collect()
    } else {
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::{StagedObject, shard};
    use std::path::PathBuf;

    #[test]
    fn epoch_zero_is_file_mode_s_assignment() {
        let keys: Vec<String> = (0..17).map(|i| format!("k{i:02}")).collect();
        let objects: Vec<StagedObject> = keys
            .iter()
            .map(|k| StagedObject { uri: format!("s3://b/{k}"), relative: PathBuf::from(k), info: None })
            .collect();
        for seed in [None, Some(42)] {
            let file_mode = shard(objects.clone(), 3, seed);
            for (host, share) in file_mode.iter().enumerate() {
                let pipe: Vec<&str> =
                    epoch_share(17, 3, host, true, seed, 0).into_iter().map(|i| keys[i].as_str()).collect();
                let file: Vec<String> = share.iter().map(|o| o.relative.display().to_string()).collect();
                assert_eq!(pipe, file);
            }
        }
    }

    #[test]
    fn a_seed_reshuffles_and_reshards_every_epoch_and_every_item_goes_somewhere_once() {
        for epoch in 0..4 {
            let mut all: Vec<usize> = (0..3).flat_map(|h| epoch_share(20, 3, h, true, Some(7), epoch)).collect();
            all.sort();
            assert_eq!(all, (0..20).collect::<Vec<_>>());
        }
        assert_ne!(epoch_share(20, 3, 0, true, Some(7), 0), epoch_share(20, 3, 0, true, Some(7), 1));
        assert_eq!(epoch_share(20, 3, 0, true, Some(7), 1), epoch_share(20, 3, 0, true, Some(7), 1));
        // Without a seed every epoch is the same; unsharded, every host gets everything.
        assert_eq!(epoch_share(5, 2, 1, true, None, 3), vec![1, 3]);
        assert_eq!(epoch_share(5, 2, 1, false, None, 3), vec![0, 1, 2, 3, 4]);
    }
}
