//! `eval landmarks` end to end on a tiny synthetic face set: fine-tuning beats predicting nothing,
//! the trained model round-trips through its file, and bad input fails clearly.
use candle_core::Device;
use trainer::data::synth::faces::{generate_faces, FacesConfig};
use trainer::model::landmarks::LandmarkModel;
use trainer::model::Arch;
use transfer_eval::landmarks::{evaluate, BackboneSource, LandmarkConfig};

fn config(data: &std::path::Path, epochs: usize) -> LandmarkConfig {
    LandmarkConfig {
        backbone: BackboneSource::Scratch {
            arch: Arch::Resnet18,
            width: 0.125,
        },
        data: data.to_owned(),
        image_size: 24,
        epochs,
        batch: 16,
        lr: None, // the paper's 0.02 at batch 128, scaled
        frozen: false,
        seed: 1,
    }
}

#[test]
fn fine_tuning_learns_landmarks_and_the_model_round_trips() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("faces");
    generate_faces(
        &FacesConfig {
            identities: 40,
            per_identity: 10,
            size: 24,
            seed: 2,
        },
        &data,
    )
    .unwrap();
    let (_, untrained) = evaluate(&config(&data, 1), &Device::Cpu).unwrap();
    let (model, trained) = evaluate(&config(&data, 15), &Device::Cpu).unwrap();
    assert!(trained.train_images > 0 && trained.iod.images == trained.test_images);
    // Predicting the mean face already gives a finite error; the fine-tuned model must beat the
    // 1-epoch model clearly.
    assert!(trained.iod.iod_error.is_finite());
    assert!(
        trained.iod.iod_error < untrained.iod.iod_error,
        "IOD error {} (15 epochs) not below {} (1 epoch)",
        trained.iod.iod_error,
        untrained.iod.iod_error
    );
    // ... and the no-image baseline: a model at the mean face learned nothing from the pixels.
    assert!(
        trained.iod.iod_error < trained.mean_face_iod.iod_error,
        "IOD error {} does not beat the mean face's {}",
        trained.iod.iod_error,
        trained.mean_face_iod.iod_error
    );
    let path = d.path().join("lm.safetensors");
    model.save(&path).unwrap();
    let back = LandmarkModel::open(&path, &Device::Cpu).unwrap();
    assert_eq!(back.input_size, 24);
}

#[test]
fn missing_mafl_lists_and_bad_backbones_fail_clearly() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("faces");
    generate_faces(
        &FacesConfig {
            identities: 6,
            per_identity: 6,
            size: 24,
            seed: 2,
        },
        &data,
    )
    .unwrap();
    let mut cfg = config(&data, 1);
    cfg.backbone = BackboneSource::File(data.join("identity_CelebA.txt"));
    let e = format!("{:#}", evaluate(&cfg, &Device::Cpu).unwrap_err());
    assert!(e.contains("identity_CelebA.txt"), "{e}");
    std::fs::remove_file(data.join("MAFL").join("testing.txt")).unwrap();
    let e = format!(
        "{:#}",
        evaluate(&config(&data, 1), &Device::Cpu).unwrap_err()
    );
    assert!(e.contains("testing.txt"), "{e}");
}
