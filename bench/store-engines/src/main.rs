//! The candidates for Midge's embedded store, measured on what the broker would ask of them:
//!
//! - `commit 1`: one small record per durable commit (fsync), as `sync = every_message` does;
//! - `commit 100`: a group commit of 100 records (a few milliseconds of QoS 1 traffic), as
//!   `sync = interval` does; and `commit 2000`, what 10 ms of 200k msg/s brings;
//! - `delete`: the same records removed again in groups of 100 (acknowledged messages leave the store);
//! - `reopen + scan`: start-up, reading every record of a store of `N` records.
//!
//! Usage: `cargo run --release --manifest-path bench/store-engines/Cargo.toml -- [N] [DIR]`
//! (N default 100000; DIR default a directory under the system's temporary one, on the disk to measure).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const VALUE: usize = 200;

trait Engine {
    const NAME: &'static str;
    fn open(dir: &Path) -> Self;
    /// Writes `records` in one durable commit.
    fn put(&mut self, records: &[(Vec<u8>, Vec<u8>)]);
    fn delete(&mut self, keys: &[Vec<u8>]);
    /// Every record's key and value length, summed.
    fn scan(&self) -> (usize, usize);
}

struct Redb {
    db: redb::Database,
}

const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("messages");

impl Engine for Redb {
    const NAME: &'static str = "redb 5";

    fn open(dir: &Path) -> Self {
        let db = redb::Database::create(dir.join("store.redb")).expect("redb opens");
        let tx = db.begin_write().unwrap();
        tx.open_table(TABLE).unwrap();
        tx.commit().unwrap();
        Redb { db }
    }

    fn put(&mut self, records: &[(Vec<u8>, Vec<u8>)]) {
        let tx = self.db.begin_write().unwrap();
        {
            let mut table = tx.open_table(TABLE).unwrap();
            for (k, v) in records {
                table.insert(k.as_slice(), v.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }

    fn delete(&mut self, keys: &[Vec<u8>]) {
        let tx = self.db.begin_write().unwrap();
        {
            let mut table = tx.open_table(TABLE).unwrap();
            for k in keys {
                table.remove(k.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }

    fn scan(&self) -> (usize, usize) {
        use redb::{ReadableDatabase, ReadableTable};
        let tx = self.db.begin_read().unwrap();
        let table = tx.open_table(TABLE).unwrap();
        let mut count = 0;
        let mut bytes = 0;
        for entry in table.iter().unwrap() {
            let (k, v) = entry.unwrap();
            count += 1;
            bytes += k.value().len() + v.value().len();
        }
        (count, bytes)
    }
}

struct Fjall {
    db: fjall::Database,
    keyspace: fjall::Keyspace,
}

impl Engine for Fjall {
    const NAME: &'static str = "fjall 3";

    fn open(dir: &Path) -> Self {
        let db = fjall::Database::builder(dir.join("fjall")).open().expect("fjall opens");
        let keyspace = db.keyspace("messages", fjall::KeyspaceCreateOptions::default).unwrap();
        Fjall { db, keyspace }
    }

    fn put(&mut self, records: &[(Vec<u8>, Vec<u8>)]) {
        let mut batch = self.db.batch().durability(Some(fjall::PersistMode::SyncAll));
        for (k, v) in records {
            batch.insert(&self.keyspace, k.clone(), v.clone());
        }
        batch.commit().unwrap();
    }

    fn delete(&mut self, keys: &[Vec<u8>]) {
        let mut batch = self.db.batch().durability(Some(fjall::PersistMode::SyncAll));
        for k in keys {
            batch.remove(&self.keyspace, k.clone());
        }
        batch.commit().unwrap();
    }

    fn scan(&self) -> (usize, usize) {
        let mut count = 0;
        let mut bytes = 0;
        for guard in self.keyspace.iter() {
            let (k, v) = guard.into_inner().unwrap();
            count += 1;
            bytes += k.len() + v.len();
        }
        (count, bytes)
    }
}

fn record(i: usize) -> (Vec<u8>, Vec<u8>) {
    let key = format!("session-{:06}/{:010}", i % 10_000, i).into_bytes();
    let value: Vec<u8> = (0..VALUE).map(|j| (i + j) as u8).collect();
    (key, value)
}

fn per_second(n: usize, took: Duration) -> String {
    format!("{:.0}/s", n as f64 / took.as_secs_f64())
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| if e.path().is_dir() { dir_size(&e.path()) } else { e.metadata().map(|m| m.len()).unwrap_or(0) })
                .sum()
        })
        .unwrap_or(0)
}

fn measure<E: Engine>(n: usize, root: &Path) {
    let dir = root.join(E::NAME.replace(' ', "-"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut engine = E::open(&dir);

    let singles = 500;
    let start = Instant::now();
    for i in 0..singles {
        engine.put(&[record(i)]);
    }
    let single = start.elapsed();

    let records: Vec<_> = (singles..n).map(record).collect();
    let half = records.len() / 2;
    let start = Instant::now();
    for group in records[..half].chunks(100) {
        engine.put(group);
    }
    let grouped = start.elapsed();
    let start = Instant::now();
    for group in records[half..].chunks(2000) {
        engine.put(group);
    }
    let large = start.elapsed();
    let size = dir_size(&dir);

    drop(engine);
    let start = Instant::now();
    let engine = E::open(&dir);
    let (count, _) = engine.scan();
    let reopen = start.elapsed();
    assert_eq!(count, n, "{}: every record back", E::NAME);

    let mut engine = engine;
    let keys: Vec<Vec<u8>> = records.iter().map(|(k, _)| k.clone()).collect();
    let start = Instant::now();
    for group in keys.chunks(100) {
        engine.delete(group);
    }
    let deleted = start.elapsed();

    println!(
        "| {} | {} ({:.2} ms each) | {} | {} | {} | {:.0} ms | {:.1} MB |",
        E::NAME,
        per_second(singles, single),
        single.as_secs_f64() * 1000.0 / singles as f64,
        per_second(half, grouped),
        per_second(records.len() - half, large),
        per_second(keys.len(), deleted),
        reopen.as_secs_f64() * 1000.0,
        size as f64 / 1e6,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|a| a.parse().expect("N is a number")).unwrap_or(100_000);
    let root: PathBuf = args.next().map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("midge-store-engines"));
    println!("{n} records of {VALUE} bytes, in {}", root.display());
    println!("| engine | commit 1 (fsync each) | commit 100 (records) | commit 2000 (records) | delete, 100 a commit | reopen + scan | on disk |");
    println!("|---|---|---|---|---|---|---|");
    measure::<Redb>(n, &root);
    measure::<Fjall>(n, &root);
}
