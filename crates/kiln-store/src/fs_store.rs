/// The on-disk store.
pub struct FsStore {}
