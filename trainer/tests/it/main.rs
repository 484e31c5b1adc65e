//! trainer's integration tests, one binary (each links candle once): model, losses, augmentation, step parity against PyTorch.
mod augment_loader;
mod augment_props;
mod method_losses;
mod model_resnet;
mod step_parity;
