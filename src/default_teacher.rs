//! The small teacher shipped in weights/ and embedded in the binary, so `cda-engine run` works with
//! no arguments on any machine (see weights/README.md for how it was made).

pub const DEFAULT_TEACHER_NAME: &str = "weights/fashion_mnist_resnet18_w16.safetensors";
pub const DEFAULT_TEACHER_BYTES: &[u8] = include_bytes!("../weights/fashion_mnist_resnet18_w16.safetensors");

/// The shipped teacher, from the bytes embedded in the binary.
pub fn load() -> crate::Result<crate::model::ResNet> {
    let file = crate::weights::parse_tensor_file(std::path::Path::new(DEFAULT_TEACHER_NAME), DEFAULT_TEACHER_BYTES)?;
    crate::model::ResNet::from_tensors(file)
}

/// The teacher a command was given (`--weights` / `--teacher`), else the shipped one, with the name
/// its records and messages use. Errors: those of [`crate::model::ResNet::load`].
pub fn load_teacher(path: Option<&std::path::Path>) -> crate::Result<(crate::model::ResNet, String)> {
    match path {
        Some(p) => Ok((crate::model::ResNet::load(p)?, p.display().to_string())),
        None => Ok((load()?, DEFAULT_TEACHER_NAME.to_string())),
    }
}
