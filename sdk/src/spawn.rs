//! Starting a step's process without copying the plugin, and waiting for it. The child is a
//! `clone(CLONE_VM | CLONE_VFORK)` that borrows the plugin's memory until it has exec'd, as
//! `posix_spawn` does, and before exec it also sets its parent-death signal and joins the
//! step's cgroup, which `posix_spawn` cannot. A `fork` instead copies the page tables of the
//! plugin, a multi-threaded process, and then faults on every page the plugin writes: for
//! short steps that was a third of the plugin's CPU. The exit is read from a pidfd. This
//! module holds every `unsafe` of the SDK's process start, each block with its reason.

use std::ffi::{CString, OsStr, c_char, c_int, c_void};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicUsize, Ordering};

use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use crate::command::StepCommand;

/// The child's stack. It runs one short function that neither allocates nor formats; glibc's
/// `posix_spawn` gets by with about 32 KiB.
const STACK_BYTES: usize = 64 * 1024;
/// Signals 1 to 64: every signal Linux has on the architectures hm runs on.
const LAST_SIGNAL: c_int = 64;
/// glibc's `PATH` when the variable is unset (`confstr(_CS_PATH)`).
const DEFAULT_PATH: &[u8] = b"/bin:/usr/bin";

/// What the child does besides exec, fixed before the clone.
pub(crate) struct ChildSetup<'a> {
    /// Open `cgroup.procs` (or, on cgroup v1, `tasks`) files the child writes `0` into,
    /// joining the step's cgroup before exec so every process of the step is in it from its
    /// first instruction.
    pub cgroup_procs: &'a [File],
    /// The step's cgroup v2 directory, when there is one: the child is started in it
    /// (`clone3` with `CLONE_INTO_CGROUP`, Linux 5.7) and writes nothing into
    /// `cgroup_procs`, which are only the way in where that cannot be done.
    pub cgroup_dir: Option<&'a File>,
    /// An address-space limit: the best there is for memory without a cgroup.
    pub memory_rlimit: Option<u64>,
}

/// A step's process, started: its pipes and the handle to wait for it.
pub(crate) struct Spawned {
    pub process: StepProcess,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
}

/// Why the process did not start, by where it failed.
#[derive(Debug)]
pub(crate) enum SpawnError {
    /// The command cannot be given to exec: a NUL byte in it.
    Nul(String),
    /// In the plugin or in the child before exec: pipes, the clone, signals, process group.
    Setup(io::Error),
    /// Joining the cgroup of the `cgroup_procs` file at this index.
    Cgroup(usize, io::Error),
    /// Entering the command's directory.
    Dir(PathBuf, io::Error),
    /// Exec itself: not found on the `PATH`, not executable, not a program.
    Exec(io::Error),
}

/// Starts `cmd` with stdin from /dev/null, stdout and stderr piped, in a process group of its
/// own, SIGKILL as its parent-death signal, default signal handling and an empty signal mask,
/// after `setup`. Returns once the child has exec'd, or with where it failed.
pub(crate) fn spawn(cmd: &StepCommand, setup: &ChildSetup<'_>) -> Result<Spawned, SpawnError> {
    let env = cmd.environment();
    let argv: Vec<CString> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|arg| c_string(arg.as_bytes().to_vec(), "an argument"))
        .collect::<Result<_, _>>()?;
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_os_str());
    let paths = exec_paths(cmd.get_program(), path_var)?;
    let envp: Vec<CString> = env
        .into_iter()
        .map(|(key, value)| {
            let mut entry = key.into_vec();
            entry.push(b'=');
            entry.extend(value.into_vec());
            c_string(entry, "an environment variable")
        })
        .collect::<Result<_, _>>()?;
    let dir = cmd
        .get_current_dir()
        .map(|dir| c_string(dir.as_os_str().as_bytes().to_vec(), "the directory"))
        .transpose()?;

    let stdin = dev_null()?;
    let (stdout, stdout_child) = pipe_pair()?;
    let (stderr, stderr_child) = pipe_pair()?;

    let plan = Plan {
        paths: pointers(&paths),
        argv: pointers(&argv),
        envp: pointers(&envp),
        dir: dir.as_ref().map_or(std::ptr::null(), |d| d.as_ptr()),
        stdio: [stdin, stdout_child.as_raw_fd(), stderr_child.as_raw_fd()],
        cgroup_fds: setup.cgroup_procs.iter().map(AsRawFd::as_raw_fd).collect(),
        started_in_cgroup: AtomicBool::new(false),
        rlimit: setup.memory_rlimit.map(|bytes| libc::rlimit {
            rlim_cur: bytes,
            rlim_max: bytes,
        }),
        parent: std::process::id() as libc::pid_t,
        failure: Failure::default(),
    };
    let pid = STACK.with_borrow_mut(|stack| {
        let stack = match stack {
            Some(stack) => stack,
            None => stack.insert(Stack::new().map_err(SpawnError::Setup)?),
        };
        clone_child(&plan, stack, setup.cgroup_dir)
    })?;
    // The child's ends: only the child may hold them, or the pipes never reach end of file.
    drop((stdout_child, stderr_child));

    if let Some(error) = plan.failure.take(cmd.get_current_dir()) {
        // The child has `_exit`ed already (the clone returns only after that, or exec): this
        // wait returns at once and leaves no zombie.
        let _ = reap(pid, 0);
        return Err(error);
    }
    let process = StepProcess::new(pid);
    let stdout = pipe_reader(stdout)?;
    let stderr = pipe_reader(stderr)?;
    Ok(Spawned {
        process,
        stdout,
        stderr,
    })
}

fn c_string(bytes: Vec<u8>, what: &str) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|e| {
        let text = String::from_utf8_lossy(&e.into_vec()).into_owned();
        SpawnError::Nul(format!("{what} holds a NUL byte: {text:?}"))
    })
}

/// Where exec looks for `program`: the program itself when it names a path (has a `/`), else
/// each directory of `PATH` in order, an empty entry meaning the current directory, as
/// `execvp` does but with the `PATH` the child will have.
fn exec_paths(program: &OsStr, path_var: Option<&OsStr>) -> Result<Vec<CString>, SpawnError> {
    let program = program.as_bytes();
    if program.contains(&b'/') {
        return Ok(vec![c_string(program.to_vec(), "the program")?]);
    }
    let path = path_var.map_or(DEFAULT_PATH, OsStr::as_bytes);
    path.split(|&b| b == b':')
        .map(|dir| {
            let mut full = if dir.is_empty() {
                b".".to_vec()
            } else {
                dir.to_vec()
            };
            full.push(b'/');
            full.extend_from_slice(program);
            c_string(full, "the program's path")
        })
        .collect()
}

/// The pointers exec takes, NULL-terminated. They point into `strings`, which must outlive
/// the child's exec.
fn pointers(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// A close-on-exec pipe: the plugin's read end and the child's write end (above 0, 1 and 2,
/// so moving it onto 1 or 2 in the child cannot overwrite another of the child's fds).
/// /dev/null, opened once per plugin: every step's stdin.
fn dev_null() -> Result<RawFd, SpawnError> {
    static DEV_NULL: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if let Some(fd) = DEV_NULL.get() {
        return Ok(fd.as_raw_fd());
    }
    let fd = above_stdio(File::open("/dev/null").map_err(SpawnError::Setup)?.into())?;
    // Another thread may have won: its descriptor is the one kept, this one is closed.
    Ok(DEV_NULL.get_or_init(|| fd).as_raw_fd())
}

/// The plugin's end of a step's pipe (from [`pipe_pair`]), non-blocking, for tokio. Made
/// here, not with `Receiver::from_owned_fd`, which asks Linux again what the pipe is and how
/// it was opened: two system calls per pipe, four per step, for what `pipe_pair` knows.
fn pipe_reader(read: OwnedFd) -> Result<pipe::Receiver, SpawnError> {
    nix::fcntl::fcntl(
        &read,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(|e| SpawnError::Setup(e.into()))?;
    // `read` is the read end of a pipe, open read-only and now non-blocking: what
    // `from_owned_fd_unchecked` requires.
    pipe::Receiver::from_owned_fd_unchecked(read).map_err(SpawnError::Setup)
}

fn pipe_pair() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| SpawnError::Setup(e.into()))?;
    Ok((read, above_stdio(write)?))
}

/// `fd`, or a close-on-exec copy of it numbered 3 or above when it is 0, 1 or 2 (possible
/// only in a plugin started with those closed).
fn above_stdio(fd: OwnedFd) -> Result<OwnedFd, SpawnError> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    let copy = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))
        .map_err(|e| SpawnError::Setup(e.into()))?;
    // SAFETY: F_DUPFD_CLOEXEC just returned this new fd, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// Everything the child reads, made before the clone: between the clone and exec the child
/// shares the plugin's memory and may only make system calls, never allocate.
struct Plan {
    paths: Vec<*const c_char>,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    dir: *const c_char,
    stdio: [RawFd; 3],
    cgroup_fds: Vec<RawFd>,
    /// Set when the clone put the child in its cgroup: then it writes into no `cgroup_fds`.
    started_in_cgroup: AtomicBool,
    rlimit: Option<libc::rlimit>,
    parent: libc::pid_t,
    failure: Failure,
}

/// What the child writes where the plugin reads it after the clone returns, when it could
/// not exec.
#[derive(Default)]
struct Failure {
    stage: AtomicU8,
    index: AtomicUsize,
    errno: AtomicI32,
}

const STAGE_SETUP: u8 = 1;
const STAGE_CGROUP: u8 = 2;
const STAGE_DIR: u8 = 3;
const STAGE_EXEC: u8 = 4;

impl Failure {
    fn set(&self, stage: u8, index: usize, errno: c_int) {
        self.index.store(index, Ordering::Relaxed);
        self.errno.store(errno, Ordering::Relaxed);
        // Release: the plugin reads the stage first.
        self.stage.store(stage, Ordering::Release);
    }

    fn take(&self, dir: Option<&std::path::Path>) -> Option<SpawnError> {
        let stage = self.stage.load(Ordering::Acquire);
        let error = io::Error::from_raw_os_error(self.errno.load(Ordering::Relaxed));
        match stage {
            0 => None,
            STAGE_CGROUP => Some(SpawnError::Cgroup(
                self.index.load(Ordering::Relaxed),
                error,
            )),
            STAGE_DIR => Some(SpawnError::Dir(
                dir.map(PathBuf::from).unwrap_or_default(),
                error,
            )),
            STAGE_EXEC => Some(SpawnError::Exec(error)),
            _ => Some(SpawnError::Setup(error)),
        }
    }
}

thread_local! {
    /// The stack of the children this thread starts, mapped at its first start and kept: a
    /// mapping per start cost `mmap`, `mprotect` and `munmap`, each a change to the plugin's
    /// address space, about a sixth of the plugin's CPU for short steps. It is free again when
    /// `clone` returns, as the child has then exec'd (and has a stack of its own) or exited.
    static STACK: std::cell::RefCell<Option<Stack>> = const { std::cell::RefCell::new(None) };
}

/// The children's stack, with a guard page below it.
struct Stack {
    base: *mut c_void,
    len: usize,
}

impl Stack {
    fn new() -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = STACK_BYTES + page;
        // SAFETY: a fresh anonymous private mapping; no existing memory is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Self { base, len };
        // The lowest page faults on an overflow instead of the child writing past its stack.
        // SAFETY: the first page of the mapping just made.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The stack grows down from the end of the mapping, which is page-aligned.
    fn top(&self) -> *mut c_void {
        self.base.wrapping_byte_add(self.len)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made, used by no one once the child has exec'd or exited.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Clones the child with every signal blocked, so no handler of the plugin's can run in the
/// child while it shares the plugin's memory; the child resets the handlers before it
/// unblocks. Returns the child's pid once it has exec'd or exited.
///
/// With `cgroup_dir`, the child starts in that cgroup v2 directory where Linux can do that;
/// otherwise it is cloned as anywhere else and joins its cgroups itself.
fn clone_child(
    plan: &Plan,
    stack: &Stack,
    cgroup_dir: Option<&File>,
) -> Result<libc::pid_t, SpawnError> {
    // SAFETY: sigset_t is plain data; sigfillset initialises it.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut before: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both sets are valid for writes; pthread_sigmask only changes this thread's mask.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut before);
    }
    let into_cgroup = cgroup_dir.and_then(|dir| clone_into_cgroup(plan, stack, dir));
    let (pid, error) = into_cgroup.unwrap_or_else(|| {
        // SAFETY: CLONE_VFORK suspends this thread until the child has exec'd or exited, so
        // `plan` and `stack`, borrowed for this call, outlive every use the child makes of
        // them. The child runs `child_main` on `stack`, which makes only async-signal-safe
        // system calls and ends in exec or `_exit`, never returning into this thread's frames.
        let pid = unsafe {
            libc::clone(
                child_main,
                stack.top(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                std::ptr::from_ref(plan).cast_mut().cast(),
            )
        };
        // The child shares this thread's errno, but runs only when the clone succeeded, and
        // then the error is not used.
        (pid, io::Error::last_os_error())
    });
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &before, std::ptr::null_mut()) };
    if pid == -1 {
        return Err(SpawnError::Setup(error));
    }
    Ok(pid)
}

/// Whether `clone3` with `CLONE_INTO_CGROUP` has failed here as unknown to Linux (before 5.7,
/// or filtered): then no step tries it again.
static NO_CLONE_INTO_CGROUP: AtomicBool = AtomicBool::new(false);

/// `struct clone_args` of clone3(2), up to `cgroup` (Linux 5.7).
#[cfg(target_arch = "x86_64")]
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Clones the child straight into the cgroup v2 directory `dir`: no `cgroup.procs` write, so
/// the start does not take Linux's system-wide lock for moving processes between cgroups for
/// writing (`cgroup_threadgroup_rwsem`), which made steps wait on each other's starts and
/// exits. `None` when it could not be done (the caller then clones as anywhere else, and the
/// child joins by writing, which reports why if it cannot either); otherwise the pid and the
/// error as [`clone_child`] gives them.
#[cfg(target_arch = "x86_64")]
fn clone_into_cgroup(plan: &Plan, stack: &Stack, dir: &File) -> Option<(libc::pid_t, io::Error)> {
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    if NO_CLONE_INTO_CGROUP.load(Ordering::Relaxed) {
        return None;
    }
    plan.started_in_cgroup.store(true, Ordering::Relaxed);
    let args = CloneArgs {
        flags: libc::CLONE_VM as u64 | libc::CLONE_VFORK as u64 | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.base as u64,
        stack_size: stack.len as u64,
        cgroup: dir.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    let ret: i64;
    // SAFETY: clone3 with CLONE_VM | CLONE_VFORK, as `clone_child`'s `libc::clone`: this
    // thread is suspended until the child has exec'd or exited, and `args`, `plan` and `stack`
    // outlive that. The child resumes after the `syscall` with its stack pointer at the top of
    // `stack` (clone3 sets it to `stack + stack_size`, page-aligned, so the `call` leaves it
    // aligned as the C ABI wants) and calls `child_main(plan)`, which ends in exec or `_exit`
    // and never returns; it touches no register or stack slot of this thread's. In this
    // thread the syscall only clobbers rcx and r11, declared; rax is the result.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") std::ptr::from_ref(&args),
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") std::ptr::from_ref(plan),
            in("r13") child_main as extern "C" fn(*mut c_void) -> c_int,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if let Ok(pid) = libc::pid_t::try_from(ret)
        && pid > 0
    {
        return Some((pid, io::Error::from_raw_os_error(0)));
    }
    plan.started_in_cgroup.store(false, Ordering::Relaxed);
    let errno = i32::try_from(-ret).unwrap_or(libc::EINVAL);
    // No clone3 or no CLONE_INTO_CGROUP (a filter refusing clone3 says ENOSYS): not worth a try per
    // step. Other errors (the directory is no v2 cgroup, the cgroup refuses processes) are
    // this step's: its child joins by writing, and says why if it cannot.
    if matches!(errno, libc::ENOSYS | libc::E2BIG | libc::EINVAL) {
        NO_CLONE_INTO_CGROUP.store(true, Ordering::Relaxed);
    }
    None
}

/// Only x86-64 has the entry into the child that `clone3` needs; elsewhere the child joins its
/// cgroup by writing.
#[cfg(not(target_arch = "x86_64"))]
fn clone_into_cgroup(_: &Plan, _: &Stack, _: &File) -> Option<(libc::pid_t, io::Error)> {
    None
}

/// The child, from the clone to exec. On failure it records where and why in the plan and
/// exits with 127 (the code a shell gives a command it cannot run).
extern "C" fn child_main(plan: *mut c_void) -> c_int {
    // SAFETY: `clone_child` passed a `&Plan` that stays borrowed until this child has
    // exec'd or exited.
    let plan = unsafe { &*plan.cast::<Plan>() };
    // SAFETY: the child only calls functions that are async-signal-safe and do not allocate,
    // on data `spawn` prepared.
    let (stage, index, errno) = unsafe { prepare_and_exec(plan) };
    plan.failure.set(stage, index, errno);
    // SAFETY: ends the child without running anything of the plugin's (no atexit, no
    // flushing of buffers that belong to the plugin).
    unsafe { libc::_exit(127) }
}

/// Returns only on failure: the stage, the index of the cgroup file, and errno.
///
/// # Safety
/// Only for the child of `clone_child`, with the plan it was given.
unsafe fn prepare_and_exec(plan: &Plan) -> (u8, usize, c_int) {
    // SAFETY (for the whole function): every call is a system call wrapper that is
    // async-signal-safe; the pointers come from `plan`, alive until exec.
    unsafe {
        let errno = || *libc::__errno_location();
        // Handlers of the plugin's must not run here (they would run on the plugin's memory),
        // and a step starts with default handling, except what the plugin ignores; SIGPIPE,
        // which Rust ignores in every program, goes back to its default as `Command` does.
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for signal in 1..=LAST_SIGNAL {
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut current) != 0 {
                continue; // SIGKILL, SIGSTOP and the signals glibc keeps for itself
            }
            let handled = current.sa_sigaction != libc::SIG_DFL;
            if handled && (current.sa_sigaction != libc::SIG_IGN || signal == libc::SIGPIPE) {
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == -1 {
            return (STAGE_SETUP, 0, errno());
        }
        // The plugin may have died before prctl: then nobody would kill this process.
        if libc::getppid() != plan.parent {
            libc::_exit(1);
        }
        if libc::setpgid(0, 0) == -1 {
            return (STAGE_SETUP, 0, errno());
        }
        // `0`: the writer itself (see `process::open_cgroup_procs` for why not the pid).
        let joins = if plan.started_in_cgroup.load(Ordering::Relaxed) {
            &[][..]
        } else {
            &plan.cgroup_fds[..]
        };
        for (index, &fd) in joins.iter().enumerate() {
            if libc::write(fd, c"0".as_ptr().cast(), 1) == -1 {
                return (STAGE_CGROUP, index, errno());
            }
        }
        if let Some(limit) = &plan.rlimit
            && libc::setrlimit(libc::RLIMIT_AS, limit) == -1
        {
            return (STAGE_SETUP, 0, errno());
        }
        for (target, &fd) in plan.stdio.iter().enumerate() {
            if libc::dup2(fd, target as c_int) == -1 {
                return (STAGE_SETUP, 0, errno());
            }
        }
        if !plan.dir.is_null() && libc::chdir(plan.dir) == -1 {
            return (STAGE_DIR, 0, errno());
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // As execvp: a directory where the program is not (or cannot be looked into) means
        // the next one; a program found but not executable is reported if nothing better is.
        let mut denied = false;
        for &path in plan.paths.iter().take_while(|p| !p.is_null()) {
            libc::execve(path, plan.argv.as_ptr(), plan.envp.as_ptr());
            match errno() {
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR => {}
                other => return (STAGE_EXEC, 0, other),
            }
        }
        let last = if denied { libc::EACCES } else { libc::ENOENT };
        (STAGE_EXEC, 0, last)
    }
}

/// A started step process until it is reaped. Dropped before that (the step's future was
/// dropped), it kills the process and reaps it in the background, so no zombie is left.
pub(crate) struct StepProcess {
    pid: libc::pid_t,
    exit: Option<ExitWatch>,
    status: Option<ExitStatus>,
}

/// What wakes the wait for the exit: the process's pidfd (Linux 5.3 and later), or every
/// SIGCHLD of the plugin where pidfds are missing.
enum ExitWatch {
    Pidfd(AsyncFd<OwnedFd>),
    Sigchld(tokio::signal::unix::Signal),
    /// Neither could be set up: the wait polls.
    Poll,
}

impl StepProcess {
    fn new(pid: libc::pid_t) -> Self {
        Self {
            pid,
            exit: Some(ExitWatch::for_pid(pid)),
            status: None,
        }
    }

    pub fn id(&self) -> i32 {
        self.pid
    }

    /// Waits for the process to exit and reaps it. Cancel-safe: a wait dropped before the
    /// exit can be started again.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let watch = self.exit.get_or_insert(ExitWatch::Poll);
        let status = watch.wait(self.pid).await?;
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for StepProcess {
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        // Not reaped yet, so the pid still names this process.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let pid = self.pid;
        let mut watch = self.exit.take().unwrap_or(ExitWatch::Poll);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _ = watch.wait(pid).await;
                });
            }
            Err(_) => {
                std::thread::spawn(move || reap(pid, 0));
            }
        }
    }
}

impl ExitWatch {
    fn for_pid(pid: libc::pid_t) -> Self {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if let Ok(fd) = RawFd::try_from(fd)
            && fd >= 0
        {
            // SAFETY: pidfd_open just returned this fd, and nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: the `OwnedFd` keeps the pidfd open, and its number unchanged, for as
            // long as the `AsyncFd` owns it.
            let registered =
                unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
            if let Ok(fd) = registered {
                return Self::Pidfd(fd);
            }
        }
        Self::sigchld()
    }

    fn sigchld() -> Self {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
            .map_or(Self::Poll, Self::Sigchld)
    }

    async fn wait(&mut self, pid: libc::pid_t) -> io::Result<ExitStatus> {
        match self {
            // Readable once the process has exited, also when it had before the fd was
            // registered. Nothing is asked of Linux before that: a step's read loop makes a
            // new wait on every pass, thousands a second for a chatty step, and a `waitpid`
            // each time was a third of the plugin's system calls.
            Self::Pidfd(fd) => loop {
                let mut ready = fd.readable().await?;
                if let Some(status) = reap(pid, libc::WNOHANG)? {
                    return Ok(status);
                }
                ready.clear_ready();
            },
            // Any child's exit: look again. A SIGCHLD between a look and the wait is not
            // lost; the stream keeps it from its creation on. One before that is, so the
            // first look comes first.
            Self::Sigchld(signal) => loop {
                if let Some(status) = reap(pid, libc::WNOHANG)? {
                    return Ok(status);
                }
                signal.recv().await;
            },
            Self::Poll => loop {
                if let Some(status) = reap(pid, libc::WNOHANG)? {
                    return Ok(status);
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            },
        }
    }
}

/// `waitpid` for `pid`: its status once it has exited (and is reaped), `None` while it runs
/// (with `WNOHANG`).
fn reap(pid: libc::pid_t, flags: c_int) -> io::Result<Option<ExitStatus>> {
    let mut status: c_int = 0;
    loop {
        // SAFETY: `status` is valid for writes.
        match unsafe { libc::waitpid(pid, &mut status, flags) } {
            0 => return Ok(None),
            -1 => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
            _ => return Ok(Some(ExitStatus::from_raw(status))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::path::PathBuf;
    use std::sync::atomic::Ordering;

    use super::{ChildSetup, ExitWatch, NO_CLONE_INTO_CGROUP, SpawnError, StepProcess, spawn};
    use crate::command::StepCommand;
    use tokio::io::AsyncReadExt;

    const NO_SETUP: ChildSetup<'static> = ChildSetup {
        cgroup_procs: &[],
        cgroup_dir: None,
        memory_rlimit: None,
    };

    async fn output(cmd: &StepCommand) -> (String, std::process::ExitStatus) {
        let mut spawned = spawn(cmd, &NO_SETUP).unwrap_or_else(|e| panic!("spawn: {e:?}"));
        let mut out = String::new();
        spawned.stdout.read_to_string(&mut out).await.unwrap();
        let status = spawned.process.wait().await.unwrap();
        (out, status)
    }

    #[tokio::test]
    async fn the_child_gets_its_arguments_environment_and_directory() {
        let dir = std::env::temp_dir();
        let mut cmd = StepCommand::new("sh");
        cmd.arg("-c")
            .arg(r#"printf '%s|%s|%s|%s' "$0" "$HM_SPAWN_TEST" "$(pwd -P)" "${HOME-unset}""#)
            .arg("zero")
            .env("HM_SPAWN_TEST", "a b\tc")
            .env_remove("HOME")
            .current_dir(&dir);
        let (out, status) = output(&cmd).await;
        assert!(status.success(), "{status:?}");
        let dir = dir.canonicalize().unwrap();
        assert_eq!(out, format!("zero|a b\tc|{}|unset", dir.display()));
    }

    #[tokio::test]
    async fn the_child_starts_with_default_signals_unblocked_in_a_group_of_its_own() {
        // The test binary ignores SIGPIPE (every Rust program does) and tokio handles SIGCHLD
        // here; neither may reach the step.
        let _sigchld =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).unwrap();
        let mut cmd = StepCommand::new("cat");
        cmd.arg("/proc/self/stat").arg("/proc/self/status");
        let mut spawned = spawn(&cmd, &NO_SETUP).unwrap();
        let mut out = String::new();
        spawned.stdout.read_to_string(&mut out).await.unwrap();
        let pid = spawned.process.id();
        assert!(spawned.process.wait().await.unwrap().success());
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_else(|| panic!("no {name} in {out}"))
                .to_owned()
        };
        // What the plugin ignores stays ignored (as with `Command`), except SIGPIPE.
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        let ignored = own
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .unwrap()
            .trim();
        let ignored = u64::from_str_radix(ignored, 16).unwrap() & !(1 << (libc::SIGPIPE - 1));
        assert_eq!(field("SigIgn:"), format!("{ignored:016x}"));
        assert_eq!(field("SigBlk:"), "0000000000000000");
        assert_eq!(field("SigCgt:"), "0000000000000000");
        // /proc/self/stat: pid (comm) state ppid pgrp ...
        let stat = out.lines().next().unwrap();
        let after_comm = stat.rsplit_once(") ").unwrap().1;
        let pgrp: i32 = after_comm.split(' ').nth(2).unwrap().parse().unwrap();
        assert_eq!(pgrp, pid);
    }

    #[tokio::test]
    async fn a_missing_program_a_program_that_cannot_run_and_a_missing_directory_say_so() {
        let missing = StepCommand::new("hm-no-such-program");
        match spawn(&missing, &NO_SETUP) {
            Err(SpawnError::Exec(e)) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
            other => panic!("{:?}", other.err()),
        }
        let file = std::env::temp_dir().join(format!("hm-spawn-noexec-{}", std::process::id()));
        std::fs::write(&file, "#!/bin/sh\n").unwrap();
        let not_executable = StepCommand::new(&file);
        let result = spawn(&not_executable, &NO_SETUP);
        std::fs::remove_file(&file).unwrap();
        match result {
            Err(SpawnError::Exec(e)) => {
                assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied)
            }
            other => panic!("{:?}", other.err()),
        }
        let mut no_dir = StepCommand::new("true");
        no_dir.current_dir("/hm-no-such-dir");
        match spawn(&no_dir, &NO_SETUP) {
            Err(SpawnError::Dir(dir, e)) => {
                assert_eq!(dir, std::path::Path::new("/hm-no-such-dir"));
                assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("{:?}", other.err()),
        }
        let mut nul = StepCommand::new("true");
        nul.arg("a\0b");
        assert!(matches!(spawn(&nul, &NO_SETUP), Err(SpawnError::Nul(_))));
    }

    #[tokio::test]
    async fn every_step_reads_dev_null_and_its_pipes_do_not_block_it() {
        // Twice: the second step gets the /dev/null the first one opened. The child's ends
        // are blocking (a step that writes more than the pipe holds waits, it does not fail),
        // the plugin's are not.
        for _ in 0..2 {
            let mut cmd = StepCommand::new("sh");
            cmd.arg("-c")
                .arg("readlink /proc/self/fd/0; cat; grep ^flags: /proc/self/fdinfo/1");
            let mut spawned = spawn(&cmd, &NO_SETUP).unwrap();
            let flags = nix::fcntl::fcntl(&spawned.stdout, nix::fcntl::FcntlArg::F_GETFL).unwrap();
            assert_ne!(flags & libc::O_NONBLOCK, 0, "the plugin's end blocks");
            let mut out = String::new();
            spawned.stdout.read_to_string(&mut out).await.unwrap();
            assert!(spawned.process.wait().await.unwrap().success());
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines[0], "/dev/null", "{out}");
            // fdinfo flags are octal; O_NONBLOCK is 04000.
            let child_flags =
                u32::from_str_radix(lines[1].trim_start_matches("flags:").trim(), 8).unwrap();
            assert_eq!(
                child_flags & 0o4000,
                0,
                "the step's stdout does not block: {out}"
            );
        }
    }

    /// This process's cgroup v2 directory, when the unified hierarchy is mounted.
    fn own_v2_dir() -> Option<PathBuf> {
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let own = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mount = mountinfo.lines().find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            right
                .starts_with("cgroup2 ")
                .then(|| left.split(' ').nth(4))
                .flatten()
        })?;
        Some(PathBuf::from(mount).join(own.trim_start_matches('/')))
    }

    /// A cgroup v2 directory of the test's own below this process's, removed when dropped;
    /// `None` (the test says it skipped) where there is no writable v2 hierarchy.
    struct TestCgroup(PathBuf);

    impl TestCgroup {
        fn new(test: &str) -> Option<Self> {
            let dir = own_v2_dir()?.join(format!("hm-spawn-{test}-{}", std::process::id()));
            match std::fs::create_dir(&dir) {
                Ok(()) => Some(Self(dir)),
                Err(e) => {
                    assert!(
                        std::env::var_os("HM_REQUIRE_CGROUPS").is_none_or(|v| v != "1"),
                        "{test}: cannot create {}: {e}",
                        dir.display()
                    );
                    eprintln!("{test}: skipped: cannot create {}: {e}", dir.display());
                    None
                }
            }
        }

        fn file(&self, name: &str, write: bool) -> File {
            std::fs::OpenOptions::new()
                .read(!write)
                .write(write)
                .open(self.0.join(name))
                .unwrap()
        }
    }

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    /// The cgroup v2 path `cmd`'s child reports for itself.
    async fn child_cgroup(setup: &ChildSetup<'_>) -> String {
        let mut cmd = StepCommand::new("cat");
        cmd.arg("/proc/self/cgroup");
        let mut spawned = spawn(&cmd, setup).unwrap();
        let mut out = String::new();
        spawned.stdout.read_to_string(&mut out).await.unwrap();
        assert!(spawned.process.wait().await.unwrap().success());
        out.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or_default()
            .to_owned()
    }

    #[tokio::test]
    async fn a_child_starts_in_its_cgroup_v2_directory_without_joining() {
        let Some(cgroup) = TestCgroup::new("clone-into") else {
            return;
        };
        let dir = std::fs::File::open(&cgroup.0).unwrap();
        // No file to join by: only the clone can have put it there.
        let setup = ChildSetup {
            cgroup_dir: Some(&dir),
            ..NO_SETUP
        };
        let path = child_cgroup(&setup).await;
        assert!(cgroup.0.ends_with(path.trim_start_matches('/')), "{path}");
        assert!(!NO_CLONE_INTO_CGROUP.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_child_that_cannot_start_in_its_cgroup_joins_it_by_writing() {
        let Some(cgroup) = TestCgroup::new("join") else {
            return;
        };
        // Not a cgroup: the clone refuses it, the child joins through `cgroup.procs`.
        let not_a_cgroup = std::fs::File::open(std::env::temp_dir()).unwrap();
        let procs = [cgroup.file("cgroup.procs", true)];
        let setup = ChildSetup {
            cgroup_procs: &procs,
            cgroup_dir: Some(&not_a_cgroup),
            ..NO_SETUP
        };
        let path = child_cgroup(&setup).await;
        assert!(cgroup.0.ends_with(path.trim_start_matches('/')), "{path}");
        // That refusal was the directory's, not Linux's: others still try.
        assert!(!NO_CLONE_INTO_CGROUP.load(Ordering::Relaxed));
        assert_eq!(
            std::io::read_to_string(cgroup.file("cgroup.procs", false)).unwrap(),
            "",
            "the child was reaped"
        );
    }

    #[tokio::test]
    async fn the_program_is_looked_up_in_the_childs_path() {
        let mut cmd = StepCommand::new("sh");
        cmd.arg("-c")
            .arg("echo found")
            .env("PATH", "/hm-no-such-dir:/bin:/usr/bin");
        let (out, status) = output(&cmd).await;
        assert!(status.success());
        assert_eq!(out, "found\n");
        cmd.env("PATH", "/hm-no-such-dir");
        assert!(matches!(spawn(&cmd, &NO_SETUP), Err(SpawnError::Exec(_))));
    }

    /// Whether `pid` is still a process or a zombie (not reaped).
    fn exists(pid: i32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    #[tokio::test]
    async fn a_process_dropped_before_its_exit_is_killed_and_reaped() {
        let mut cmd = StepCommand::new("sleep");
        cmd.arg("60");
        let spawned = spawn(&cmd, &NO_SETUP).unwrap();
        let pid = spawned.process.id();
        drop(spawned);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while exists(pid) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "process {pid} still there 10 s after its drop"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Whether `pid` has exited and waits to be reaped.
    fn zombie(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
    }

    #[tokio::test]
    async fn an_exit_before_the_wait_began_is_seen() {
        // The pidfd is opened only once the process is a zombie: it must be readable from its
        // registration on, as nothing else will ever wake the wait.
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !zombie(pid) {
            assert!(std::time::Instant::now() < deadline, "{pid} did not exit");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let mut process = StepProcess::new(pid);
        assert!(matches!(process.exit, Some(ExitWatch::Pidfd(_))));
        // A wait dropped before the exit is seen, then started again.
        let _ = tokio::time::timeout(std::time::Duration::ZERO, process.wait()).await;
        let status = tokio::time::timeout(std::time::Duration::from_secs(10), process.wait())
            .await
            .expect("the exit of a zombie was not seen")
            .unwrap();
        assert_eq!(status.code(), Some(3));
        assert!(!exists(pid));
        // `std` never waited: the status was ours to take.
        drop(child);
    }

    #[tokio::test]
    async fn the_exit_is_seen_without_pidfds_too() {
        for exit in [ExitWatch::sigchld(), ExitWatch::Poll] {
            let mut cmd = StepCommand::new("sh");
            cmd.arg("-c").arg("exit 7");
            let mut spawned = spawn(&cmd, &NO_SETUP).unwrap();
            let pid = spawned.process.id();
            // Nothing waits before this: the process cannot have been reaped yet.
            spawned.process.exit = Some(exit);
            assert_eq!(spawned.process.wait().await.unwrap().code(), Some(7));
            assert!(!exists(pid));
        }
    }
}
