//! Compiles every `kernels/*.cu` to PTX through NVRTC and embeds the PTX in the binary.
//!
//! NVRTC is opened by path at build time, so nothing CUDA is a link dependency. It is looked for in:
//!   1. `CDA_NVRTC_LIB` (a file path to libnvrtc),
//!   2. `$CUDA_PATH` / `$CUDA_HOME` / `/usr/local/cuda` (lib64, lib),
//!   3. the PyPI wheel `nvidia-cuda-nvrtc-cu12` (site-packages/nvidia/cuda_nvrtc/lib) of `python3`,
//!   4. the dynamic loader's search path.
//!
//! Without NVRTC the build succeeds with a warning and a CPU-only binary; `CDA_REQUIRE_NVRTC=1` turns a
//! missing NVRTC or any kernel compile error into a build failure (CI sets it).
//!
//! It also lists every kernel entry point (`CDA_EXPORT(name)` lines in kernels/*.cu) into
//! `kernel_table.rs`, and compiles the same kernel sources as C++17 for host emulation (kernels/host_shim.h)
//! into a static library with the `cc` crate, enabling `cfg(cda_emu)`. Without a C++17 compiler the build
//! goes on without emulation (warning); `CDA_REQUIRE_EMULATION=1` makes that an error, and
//! `CDA_NO_EMULATION=1` skips it.

use std::env;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Virtual architecture of the embedded PTX: sm_80 is the oldest GPU with TF32 `mma.sync`;
/// the driver JIT-compiles this PTX for any newer GPU (sm_86, sm_89, sm_90, ...).
const PTX_ARCH: &str = "compute_80";

type NvrtcProgram = *mut c_void;

struct Nvrtc {
    _lib: libloading::Library,
    path: PathBuf,
    version: unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int,
    create: unsafe extern "C" fn(*mut NvrtcProgram, *const c_char, *const c_char, c_int, *const *const c_char, *const *const c_char) -> c_int,
    compile: unsafe extern "C" fn(NvrtcProgram, c_int, *const *const c_char) -> c_int,
    log_size: unsafe extern "C" fn(NvrtcProgram, *mut usize) -> c_int,
    log: unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> c_int,
    ptx_size: unsafe extern "C" fn(NvrtcProgram, *mut usize) -> c_int,
    ptx: unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> c_int,
    destroy: unsafe extern "C" fn(*mut NvrtcProgram) -> c_int,
}

impl Nvrtc {
    fn open(path: &Path) -> Result<Nvrtc, String> {
        // SAFETY: loading a shared library runs its initialisers; libnvrtc's are benign.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the signatures match nvrtc.h of CUDA 11.x-13.x.
                *unsafe { lib.get($name) }.map_err(|e| format!("{}: {e}", String::from_utf8_lossy($name)))?
            };
        }
        Ok(Nvrtc {
            version: sym!(b"nvrtcVersion"),
            create: sym!(b"nvrtcCreateProgram"),
            compile: sym!(b"nvrtcCompileProgram"),
            log_size: sym!(b"nvrtcGetProgramLogSize"),
            log: sym!(b"nvrtcGetProgramLog"),
            ptx_size: sym!(b"nvrtcGetPTXSize"),
            ptx: sym!(b"nvrtcGetPTX"),
            destroy: sym!(b"nvrtcDestroyProgram"),
            path: path.to_path_buf(),
            _lib: lib,
        })
    }

    fn version(&self) -> (i32, i32) {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two valid out-pointers.
        unsafe { (self.version)(&mut major, &mut minor) };
        (major, minor)
    }

    /// Compiles one translation unit; Err carries NVRTC's log.
    fn compile(&self, name: &str, source: &str, options: &[String]) -> Result<String, String> {
        let src = CString::new(source).map_err(|e| e.to_string())?;
        let cname = CString::new(name).unwrap();
        let opts: Vec<CString> = options.iter().map(|o| CString::new(o.as_str()).unwrap()).collect();
        let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
        let mut prog: NvrtcProgram = std::ptr::null_mut();
        // SAFETY: all pointers outlive the calls; NVRTC copies the source.
        unsafe {
            let rc = (self.create)(&mut prog, src.as_ptr(), cname.as_ptr(), 0, std::ptr::null(), std::ptr::null());
            if rc != 0 {
                return Err(format!("nvrtcCreateProgram failed with code {rc}"));
            }
            let rc = (self.compile)(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr());
            let mut log_len = 0usize;
            (self.log_size)(prog, &mut log_len);
            let mut log = vec![0u8; log_len.max(1)];
            (self.log)(prog, log.as_mut_ptr() as *mut c_char);
            let log = CStr::from_bytes_until_nul(&log).map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();
            if rc != 0 {
                (self.destroy)(&mut prog);
                return Err(log);
            }
            if !log.trim().is_empty() {
                println!("cargo:warning={name}: {}", log.trim().replace('\n', " | "));
            }
            let mut ptx_len = 0usize;
            (self.ptx_size)(prog, &mut ptx_len);
            let mut ptx = vec![0u8; ptx_len];
            (self.ptx)(prog, ptx.as_mut_ptr() as *mut c_char);
            (self.destroy)(&mut prog);
            let ptx = CStr::from_bytes_until_nul(&ptx).map_err(|e| e.to_string())?;
            Ok(ptx.to_string_lossy().into_owned())
        }
    }
}

fn nvrtc_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(p) = env::var("CDA_NVRTC_LIB") {
        out.push(PathBuf::from(p));
    }
    let mut roots: Vec<PathBuf> = ["CUDA_PATH", "CUDA_HOME", "CUDA_ROOT"].iter().filter_map(|v| env::var_os(v).map(PathBuf::from)).collect();
    roots.push(PathBuf::from("/usr/local/cuda"));
    let names = ["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"];
    for root in roots {
        for sub in ["lib64", "lib", "targets/x86_64-linux/lib"] {
            for n in names {
                out.push(root.join(sub).join(n));
            }
        }
    }
    // The PyPI wheel nvidia-cuda-nvrtc-cu12 installs into site-packages/nvidia/cuda_nvrtc/lib.
    let python = env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    if let Ok(o) =
        Command::new(python).args(["-c", "import site,sys; print('\\n'.join(site.getsitepackages() + [site.getusersitepackages()] + sys.path))"]).output()
    {
        for dir in String::from_utf8_lossy(&o.stdout).lines() {
            out.push(Path::new(dir).join("nvidia/cuda_nvrtc/lib/libnvrtc.so.12"));
        }
    }
    out.retain(|p| p.is_file());
    // Last: let the dynamic loader search LD_LIBRARY_PATH and ld.so.cache.
    for n in ["libnvrtc.so.12", "libnvrtc.so.13", "libnvrtc.so"] {
        out.push(PathBuf::from(n));
    }
    out
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kernel_dir = manifest.join("kernels");
    for v in
        ["CDA_NVRTC_LIB", "CUDA_PATH", "CUDA_HOME", "CUDA_ROOT", "CDA_REQUIRE_NVRTC", "PYTHON", "LD_LIBRARY_PATH", "CDA_REQUIRE_EMULATION", "CDA_NO_EMULATION"]
    {
        println!("cargo:rerun-if-env-changed={v}");
    }
    println!("cargo:rerun-if-changed=kernels");
    let require = env::var("CDA_REQUIRE_NVRTC").map(|v| v == "1").unwrap_or(false);

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&kernel_dir)
        .expect("kernels/ directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    for p in std::fs::read_dir(&kernel_dir).unwrap().flatten() {
        println!("cargo:rerun-if-changed={}", p.path().display());
    }

    let nvrtc = nvrtc_candidates().into_iter().find_map(|p| Nvrtc::open(&p).ok());
    let mut generated = String::from("// Generated by build.rs: PTX of kernels/*.cu.\n");
    match &nvrtc {
        None => {
            let msg = "NVRTC not found (set CUDA_PATH, or `pip install \"nvidia-cuda-nvrtc-cu12==12.9.*\"`, \
                       or CDA_NVRTC_LIB=/path/libnvrtc.so.12): building a CPU-only binary";
            if require {
                panic!("CDA_REQUIRE_NVRTC=1 but {msg}");
            }
            println!("cargo:warning={msg}");
            writeln!(generated, "pub const NVRTC_VERSION: Option<(i32, i32)> = None;").unwrap();
            writeln!(generated, "pub const NVRTC_PATH: Option<&str> = None;").unwrap();
        }
        Some(n) => {
            let (major, minor) = n.version();
            writeln!(generated, "pub const NVRTC_VERSION: Option<(i32, i32)> = Some(({major}, {minor}));").unwrap();
            writeln!(generated, "pub const NVRTC_PATH: Option<&str> = Some({:?});", n.path.display().to_string()).unwrap();
        }
    }
    writeln!(generated, "pub const PTX_ARCH: &str = {PTX_ARCH:?};").unwrap();
    writeln!(generated, "pub const KERNEL_MODULES: &[KernelModule] = &[").unwrap();
    let options = vec![
        format!("--gpu-architecture={PTX_ARCH}"),
        format!("--include-path={}", kernel_dir.display()),
        "--std=c++17".to_string(),
        "-default-device".to_string(),
    ];
    let mut failures = Vec::new();
    for src in &sources {
        let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(src).unwrap();
        let ptx = match &nvrtc {
            None => None,
            Some(n) => match n.compile(&format!("{stem}.cu"), &text, &options) {
                Ok(ptx) => {
                    let path = out_dir.join(format!("{stem}.ptx"));
                    std::fs::write(&path, ptx).unwrap();
                    Some(path)
                }
                Err(log) => {
                    failures.push(format!("kernels/{stem}.cu:\n{log}"));
                    None
                }
            },
        };
        match ptx {
            Some(p) => writeln!(generated, "    KernelModule {{ name: {stem:?}, ptx: Some(include_str!({:?})) }},", p.display().to_string()),
            None => writeln!(generated, "    KernelModule {{ name: {stem:?}, ptx: None }},"),
        }
        .unwrap();
    }
    writeln!(generated, "];").unwrap();
    if !failures.is_empty() {
        let all = failures.join("\n");
        if require {
            panic!("kernel compilation failed:\n{all}");
        }
        for line in all.lines() {
            println!("cargo:warning={line}");
        }
    }
    std::fs::write(out_dir.join("kernels_ptx.rs"), generated).unwrap();

    let exports = kernel_exports(&sources);
    let emulated = build_emulation(&kernel_dir, &out_dir, &sources);
    std::fs::write(out_dir.join("kernel_table.rs"), kernel_table(&exports, emulated)).unwrap();
}

/// (module, kernel) for every `CDA_EXPORT(kernel)` line of every kernels/<module>.cu.
fn kernel_exports(sources: &[PathBuf]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for src in sources {
        let module = src.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(src).unwrap();
        for line in text.lines() {
            if let Some(rest) = line.trim().strip_prefix("CDA_EXPORT(") {
                let name = rest.split(')').next().unwrap_or("").trim();
                assert!(
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "kernels/{module}.cu: malformed CDA_EXPORT line: {line}"
                );
                out.push((module.clone(), name.to_string()));
            }
        }
    }
    out
}

/// Rust source: the kernel list, one id constant per kernel and, with emulation, the host launchers.
fn kernel_table(exports: &[(String, String)], emulated: bool) -> String {
    let mut s = String::from("// Generated by build.rs from the CDA_EXPORT lines of kernels/*.cu.\n");
    writeln!(s, "pub const KERNELS: &[KernelEntry] = &[").unwrap();
    for (m, k) in exports {
        writeln!(s, "    KernelEntry {{ module: {m:?}, name: {k:?} }},").unwrap();
    }
    writeln!(s, "];").unwrap();
    writeln!(s, "/// Kernel ids (indices into `KERNELS`), named after the entry points.").unwrap();
    writeln!(s, "pub mod ids {{").unwrap();
    for (i, (_, k)) in exports.iter().enumerate() {
        writeln!(s, "    pub const {}: super::KernelId = super::KernelId({i});", k.to_uppercase()).unwrap();
    }
    writeln!(s, "}}").unwrap();
    writeln!(s, "pub const EMULATION_BUILT: bool = {emulated};").unwrap();
    if emulated {
        writeln!(s, "extern \"C\" {{").unwrap();
        for (_, k) in exports {
            writeln!(s, "    fn cda_emu_{k}(grid: *const u32, block: *const u32, smem: u32, args: *mut *mut core::ffi::c_void) -> i32;").unwrap();
        }
        writeln!(s, "    pub(crate) fn cda_emu_last_error() -> *const core::ffi::c_char;").unwrap();
        writeln!(s, "}}").unwrap();
        writeln!(s, "/// Host launchers, in `KERNELS` order.").unwrap();
        writeln!(s, "pub(crate) static EMU_LAUNCHERS: &[EmuLauncher] = &[").unwrap();
        for (_, k) in exports {
            writeln!(s, "    cda_emu_{k},").unwrap();
        }
        writeln!(s, "];").unwrap();
    }
    s
}

/// Compiles kernels/*.cu (and host_shim.cpp) as C++17 into `libcda_kernels_emu.a`; true on success.
fn build_emulation(kernel_dir: &Path, out_dir: &Path, sources: &[PathBuf]) -> bool {
    println!("cargo::rustc-check-cfg=cfg(cda_emu)");
    let flag = |v: &str| env::var(v).map(|v| v == "1").unwrap_or(false);
    let (require, skip) = (flag("CDA_REQUIRE_EMULATION"), flag("CDA_NO_EMULATION"));
    if skip && !require {
        println!("cargo:warning=CDA_NO_EMULATION=1: building without host emulation of the CUDA kernels");
        return false;
    }
    let wrap_dir = out_dir.join("emu");
    std::fs::create_dir_all(&wrap_dir).unwrap();
    // g++ does not take .cu files as C++; a one-line wrapper per kernel file does.
    let mut files = vec![kernel_dir.join("host_shim.cpp")];
    for src in sources {
        let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
        let wrapper = wrap_dir.join(format!("{stem}.cpp"));
        std::fs::write(&wrapper, format!("#include {:?}\n", src.display().to_string())).unwrap();
        files.push(wrapper);
    }
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .include(kernel_dir)
        .files(&files)
        // Host floating point must not contract a*b+c into FMAs, so emulated kernels round like the CPU twins.
        .flag_if_supported("-ffp-contract=off")
        .flag_if_supported("-fno-fast-math")
        .warnings(false);
    match build.try_compile("cda_kernels_emu") {
        Ok(()) => {
            println!("cargo:rustc-cfg=cda_emu");
            true
        }
        Err(e) => {
            let msg = format!("host emulation of the CUDA kernels is not built (a C++17 compiler is needed): {e}");
            if require {
                panic!("CDA_REQUIRE_EMULATION=1 but {msg}");
            }
            println!("cargo:warning={msg}");
            false
        }
    }
}
