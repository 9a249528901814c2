//! The weights cache (engine::cache): written once, then mapped and used in place, with the
//! same logits bit for bit, in f32 and in int8; a corrupt, truncated, stale or foreign file is
//! rebuilt, never trusted; a directory that cannot be written leaves the weights private.

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::DType;
use classifyd::engine::cache::CacheStatus;
use classifyd::engine::tokenize::Encoded;
use classifyd::engine::{DTypeChoice, DeviceChoice, Engine, LoadOptions};

use crate::helpers::*;

fn load_cached(model: &Path, cache: &Path) -> Engine {
    load_cached_as(model, cache, DTypeChoice::Fixed(DType::F32))
}

fn load_cached_as(model: &Path, cache: &Path, dtype: DTypeChoice) -> Engine {
    let opts = LoadOptions {
        cache_dir: Some(cache.to_path_buf()),
        ..Default::default()
    };
    Engine::load_with(model, DeviceChoice::Cpu, dtype, &opts)
        .unwrap_or_else(|e| panic!("loading {}: {e}", model.display()))
}

fn load_int8(model: &Path) -> Engine {
    Engine::load(model, DeviceChoice::Cpu, DTypeChoice::Int8)
        .unwrap_or_else(|e| panic!("loading {} in int8: {e}", model.display()))
}

/// Logits of the fixture's golden texts, one padded batch.
fn logits(engine: &Engine, model: &Path) -> Vec<Vec<f32>> {
    let golden = golden(model);
    let encoded: Vec<Encoded> = classified_cases(&golden)
        .into_iter()
        .map(|c| engine.tokenize(&case_input(c), true).expect("tokenizes"))
        .collect();
    engine
        .logits_padded(&encoded.iter().collect::<Vec<_>>())
        .expect("forward")
}

/// Each text, one at a time, gives the same logits bit for bit from both engines.
fn assert_same_logits(a: &Engine, b: &Engine, texts: &[&str]) {
    for text in texts {
        let input = classifyd::engine::tokenize::Input::Text((*text).into());
        let ea = a.tokenize(&input, true).expect("tokenizes");
        let eb = b.tokenize(&input, true).expect("tokenizes");
        assert_eq!(
            a.logits(&[&ea]).expect("forward"),
            b.logits(&[&eb]).expect("forward"),
            "{text}"
        );
    }
}

fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|d| d.map(|e| e.expect("entry").path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn why(status: &CacheStatus) -> String {
    match status {
        CacheStatus::Written { why, .. } => why.clone(),
        other => panic!("expected the cache to be written, got {other:?}"),
    }
}

#[test]
fn every_family_serves_the_same_logits_from_the_cache_bit_for_bit() {
    every_family_from_the_cache(DTypeChoice::Fixed(DType::F32));
}

#[test]
fn every_family_in_int8_serves_the_same_logits_from_the_cache_bit_for_bit() {
    every_family_from_the_cache(DTypeChoice::Int8);
}

fn every_family_from_the_cache(dtype: DTypeChoice) {
    for name in FIXTURES {
        let model = fixture(name);
        let cache = tempfile::tempdir().expect("tempdir");
        let private = match dtype {
            DTypeChoice::Int8 => load_int8(&model),
            _ => load(&model, DType::F32),
        };
        assert_eq!(private.cache_status(), &CacheStatus::Off);
        let want = logits(&private, &model);
        let load_cached = |model: &Path, cache: &Path| load_cached_as(model, cache, dtype);

        let first = load_cached(&model, cache.path());
        assert_eq!(why(first.cache_status()), "none yet", "{name}");
        assert!(first.cache_status().mapped(), "{name}");
        assert_eq!(logits(&first, &model), want, "{name}: written, then mapped");

        let second = load_cached(&model, cache.path());
        let files = cache_files(cache.path());
        assert_eq!(
            files.len(),
            1,
            "{name}: one file per model, no temporaries left"
        );
        assert_eq!(
            second.cache_status(),
            &CacheStatus::Hit(files[0].clone()),
            "{name}"
        );
        let (used, entries) = second.cache_views();
        assert!(
            entries > 0 && used == entries,
            "{name}: {used} of {entries} used in place"
        );
        assert_eq!(first.cache_views(), (used, entries), "{name}");
        assert_eq!(logits(&second, &model), want, "{name}: mapped");
    }
}

#[test]
fn the_default_models_weights_are_mapped_and_give_its_logits() {
    let model = default_model();
    let cache = tempfile::tempdir().expect("tempdir");
    let texts = [
        "what a wonderful film",
        "a dull, plodding mess",
        "it was fine",
    ];
    let private = load(&model, DType::F32);
    let _written = load_cached(&model, cache.path());
    let cached = load_cached(&model, cache.path());
    assert!(matches!(cached.cache_status(), CacheStatus::Hit(_)));
    // Six layers of Q, K, V (one blob), attention out, up, down; pooler and classifier; the
    // three embedding tables.
    assert_eq!(cached.cache_views(), (6 * 6 + 2 + 3, 6 * 6 + 2 + 3));
    assert_same_logits(&private, &cached, &texts);
    // The file holds the panels in f16 (as the checkpoint stores them) plus the word table:
    // well under the 82 MiB the private f32 copy took.
    let size = fs::metadata(&cache_files(cache.path())[0])
        .expect("cache file")
        .len();
    assert!(size < 60 << 20, "cache file is {size} bytes");
    assert!(
        size > 20 << 20,
        "cache file is {size} bytes: weights missing?"
    );
}

#[test]
fn a_corrupt_truncated_stale_or_foreign_cache_is_rebuilt_never_trusted() {
    rebuilt_never_trusted(DTypeChoice::Fixed(DType::F32));
}

#[test]
fn a_corrupt_truncated_stale_or_foreign_int8_cache_is_rebuilt_never_trusted() {
    rebuilt_never_trusted(DTypeChoice::Int8);
}

fn rebuilt_never_trusted(dtype: DTypeChoice) {
    let model = scratch_copy("bert");
    let cache = tempfile::tempdir().expect("tempdir");
    let want = match dtype {
        DTypeChoice::Int8 => logits(&load_int8(model.path()), model.path()),
        _ => logits(&load(model.path(), DType::F32), model.path()),
    };
    let load_cached = |model: &Path, cache: &Path| load_cached_as(model, cache, dtype);
    let check = |expect_why: &str| {
        let engine = load_cached(model.path(), cache.path());
        let why = why(engine.cache_status());
        assert!(
            why.contains(expect_why),
            "expected {expect_why:?}, got {why:?}"
        );
        assert_eq!(logits(&engine, model.path()), want, "after {expect_why}");
        assert_eq!(
            cache_files(cache.path()).len(),
            1,
            "the file was replaced in place"
        );
    };
    check("none yet");
    let file = || cache_files(cache.path())[0].clone();

    // One bit flipped in the data.
    let mut bytes = fs::read(file()).expect("read");
    let at = bytes.len() - 100;
    bytes[at] ^= 0x10;
    fs::write(file(), &bytes).expect("write");
    check("corrupt");

    // Cut short.
    let bytes = fs::read(file()).expect("read");
    fs::write(file(), &bytes[..bytes.len() - 4096]).expect("write");
    check("truncated");

    // Not a cache file at all.
    fs::write(file(), b"hello").expect("write");
    check("not a weights cache");

    // The model changed under the same path: a weight file touched, then the config edited.
    let weights = model.path().join("model.safetensors");
    let f = fs::File::options()
        .write(true)
        .open(&weights)
        .expect("open");
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .expect("set mtime");
    drop(f);
    check("stale");
    let config = model.path().join("config.json");
    let text = fs::read_to_string(&config).expect("config");
    fs::write(&config, format!("{text}\n")).expect("write config");
    check("stale");

    // And then it is trusted again.
    let engine = load_cached(model.path(), cache.path());
    assert!(matches!(engine.cache_status(), CacheStatus::Hit(_)));
}

#[test]
fn the_default_models_int8_panels_are_mapped_beside_its_f32_ones() {
    let model = default_model();
    let cache = tempfile::tempdir().expect("tempdir");
    let private = load_int8(&model);
    let _f32 = load_cached(&model, cache.path());
    let _written = load_cached_as(&model, cache.path(), DTypeChoice::Int8);
    let cached = load_cached_as(&model, cache.path(), DTypeChoice::Int8);
    assert!(matches!(cached.cache_status(), CacheStatus::Hit(_)));
    // As in f32: Q, K and V as one blob of three int8 entries, attention out, up and down in
    // int8; pooler and classifier as f32 panels; the three embedding tables.
    assert_eq!(cached.cache_views(), (6 * 6 + 2 + 3, 6 * 6 + 2 + 3));
    assert_same_logits(
        &private,
        &cached,
        &["what a wonderful film", "a dull, plodding mess"],
    );
    // One file per dtype, side by side; the int8 one holds ~10.6 MiB of layer panels (a byte
    // a weight) plus the f16 embedding tables, against the f32 file's f16 panels.
    let files = cache_files(cache.path());
    assert_eq!(files.len(), 2, "{files:?}");
    let int8 = files
        .iter()
        .find(|f| f.to_string_lossy().contains("-int8-"))
        .expect("an int8 file");
    let f32_file = files.iter().find(|f| *f != int8).expect("an f32 file");
    let size = |f: &PathBuf| fs::metadata(f).expect("cache file").len();
    assert!(
        size(int8) > 10 << 20 && size(int8) < size(f32_file),
        "int8 {} bytes, f32 {} bytes",
        size(int8),
        size(f32_file)
    );
}

#[test]
fn an_unwritable_cache_directory_leaves_the_weights_private_and_a_read_only_one_is_read() {
    let model = fixture("distilbert");
    let want = logits(&load(&model, DType::F32), &model);

    // A directory that cannot be made (its parent is a file), even by root.
    let tmp = tempfile::tempdir().expect("tempdir");
    let blocker = tmp.path().join("file");
    fs::write(&blocker, b"").expect("write");
    let engine = load_cached(&model, &blocker.join("cache"));
    assert!(
        matches!(engine.cache_status(), CacheStatus::Unwritable { .. }),
        "{:?}",
        engine.cache_status()
    );
    assert!(!engine.cache_status().mapped());
    assert_eq!(logits(&engine, &model), want);

    // A valid file in a directory made read-only afterwards is mapped, not written.
    let cache = tmp.path().join("ro");
    drop(load_cached(&model, &cache));
    let mut perms = fs::metadata(&cache).expect("dir").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o555);
    fs::set_permissions(&cache, perms).expect("chmod");
    let engine = load_cached(&model, &cache);
    assert!(matches!(engine.cache_status(), CacheStatus::Hit(_)));
    assert_eq!(logits(&engine, &model), want);
}

#[test]
fn other_dtypes_do_not_use_the_cache() {
    let model = fixture("bert");
    let cache = tempfile::tempdir().expect("tempdir");
    let opts = LoadOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    };
    let engine = Engine::load_with(
        &model,
        DeviceChoice::Cpu,
        DTypeChoice::Fixed(DType::F16),
        &opts,
    )
    .expect("loads");
    assert_eq!(engine.cache_status(), &CacheStatus::NotUsed);
    assert!(cache_files(cache.path()).is_empty());
}

/// The cache file a load wrote or mapped.
fn cache_path(engine: &Engine) -> PathBuf {
    match engine.cache_status() {
        CacheStatus::Hit(p) | CacheStatus::Written { path: p, .. } => p.clone(),
        other => panic!("no cache file: {other:?}"),
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whatever sits at the cache file's path that is not a regular file of the daemon's own, in a
/// directory of its own, is replaced, never followed, blocked on or mapped: a FIFO (which a
/// plain open would wait on forever), a symbolic link (whose target is left as it was), and a
/// valid file owned by another uid with mode 0666 (which anyone could truncate under the map).
#[test]
fn only_a_private_regular_file_is_mapped_and_anything_else_is_replaced() {
    let model = fixture("distilbert");
    let want = logits(&load(&model, DType::F32), &model);
    let cache = tempfile::tempdir().expect("tempdir");
    let path = cache_path(&load_cached(&model, cache.path()));

    // A FIFO: the load ends (in a thread, so a hang fails the test instead of stalling it).
    fs::remove_file(&path).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap();
    assert!(made.success());
    let (tx, rx) = std::sync::mpsc::channel();
    let (m, c) = (model.clone(), cache.path().to_path_buf());
    std::thread::spawn(move || {
        let e = load_cached(&m, &c);
        let _ = tx.send((e.cache_status().clone(), logits(&e, &m)));
    });
    let (status, got) = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("a FIFO at the cache path must not block the load");
    assert!(why(&status).contains("not a regular file"), "{status:?}");
    assert_eq!(got, want);
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_file());

    // A symbolic link to a file the daemon could write: replaced, its target untouched.
    let victim = cache.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&victim, &path).unwrap();
    let engine = load_cached(&model, cache.path());
    assert!(
        why(engine.cache_status()).contains("symbolic link"),
        "{:?}",
        engine.cache_status()
    );
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert!(!fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(logits(&engine, &model), want);

    // A valid file of another uid, writable by all: not mapped, rewritten as the daemon's own.
    if !is_root() {
        eprintln!("skipping the foreign-owner case: it needs root to chown");
        return;
    }
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    let mut perms = fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o666);
    fs::set_permissions(&path, perms).unwrap();
    let engine = load_cached(&model, cache.path());
    assert!(
        why(engine.cache_status()).contains("uid 65534"),
        "{:?}",
        engine.cache_status()
    );
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077,
        0
    );
    assert_eq!(logits(&engine, &model), want);
}

/// A cache directory that others can write, or that another uid owns, is not used at all: its
/// file is neither mapped nor written, and the weights stay private with the reason said.
#[test]
fn a_directory_others_can_write_is_not_used() {
    let model = fixture("bert");
    let want = logits(&load(&model, DType::F32), &model);
    let cache = tempfile::tempdir().expect("tempdir");
    let dir = cache.path().join("shared");
    let path = cache_path(&load_cached(&model, &dir));
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();

    let mut perms = fs::metadata(&dir).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o777);
    fs::set_permissions(&dir, perms).unwrap();
    let engine = load_cached(&model, &dir);
    match engine.cache_status() {
        CacheStatus::Untrusted { why, .. } => {
            assert!(why.contains("writable by group or others"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    assert!(!engine.cache_status().mapped());
    assert_eq!(logits(&engine, &model), want);
    assert_eq!(
        fs::metadata(&path).unwrap().modified().unwrap(),
        mtime,
        "not rewritten"
    );

    if is_root() {
        let mut perms = fs::metadata(&dir).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        fs::set_permissions(&dir, perms).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
        let engine = load_cached(&model, &dir);
        assert!(matches!(
            engine.cache_status(),
            CacheStatus::Untrusted { .. }
        ));
    }

    // A directory the load makes itself is private: 0700.
    let fresh = cache.path().join("made");
    drop(load_cached(&model, &fresh));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&fresh).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700);
}

/// A write clears what earlier ones left for the same model and dtype: a file of another kernel
/// set, and a temporary file old enough to be a crash's; a fresh temporary file (a concurrent
/// writer's) and another dtype's file are kept.
#[test]
fn a_write_removes_older_files_and_stale_temporaries_of_the_same_model() {
    let model = fixture("electra");
    let cache = tempfile::tempdir().expect("tempdir");
    let path = cache_path(&load_cached(&model, cache.path()));
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let (stem, _) = name
        .split_once("-f32-")
        .expect("{stem}-f32-{kernels}.weights");
    let other_kernels = cache
        .path()
        .join(format!("{stem}-f32-portable-old.weights"));
    let other_dtype = cache.path().join(format!("{stem}-int8-other.weights"));
    let stale = cache.path().join(format!("{name}.tmp.crashed"));
    let fresh = cache.path().join(format!("{name}.tmp.writing"));
    for p in [&other_kernels, &other_dtype, &stale, &fresh] {
        fs::write(p, b"x").unwrap();
    }
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    // A rewrite: the current file is stale (its key no longer matches a changed config).
    fs::write(&path, b"garbage").unwrap();
    let engine = load_cached(&model, cache.path());
    assert!(matches!(engine.cache_status(), CacheStatus::Written { .. }));
    assert!(!other_kernels.exists() && !stale.exists());
    assert!(other_dtype.exists() && fresh.exists());
}
