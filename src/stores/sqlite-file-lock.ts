import { AsyncMutex } from './mutex.js'

// One write lock per database file per process. better-sqlite3 waits for SQLite's write lock
// synchronously (busy_timeout), blocking Node's only thread: if two drivers of one process
// opened the same file and one of them held a transaction open across an await, the other's
// BEGIN IMMEDIATE (or plain INSERT) would freeze the process until the busy timeout and then
// fail with "database is locked", because the holder could never run again to commit. Drivers
// on the same file therefore share this FIFO lock: a transaction holds it, and the other
// drivers' writes wait for it asynchronously. Reads do not take it (in WAL mode a reader never
// waits for a writer). Other processes are still kept apart by SQLite's own lock.

interface SharedLock {
  readonly mutex: AsyncMutex
  drivers: number
}

const locks = new Map<string, SharedLock>()

/** The lock a driver uses, and how to give it up when the driver closes. */
export interface FileLock {
  readonly mutex: AsyncMutex
  /** Drops this driver's share; the lock is forgotten when the last driver of the file closes. */
  release(): void
}

/**
 * The lock shared by every driver of this process on the database file `key` (its real path),
 * or a private lock when `key` is undefined (an in-memory database belongs to one driver).
 */
export function fileLock(key: string | undefined): FileLock {
  if (key === undefined) return { mutex: new AsyncMutex(), release: () => {} }
  let shared = locks.get(key)
  if (shared === undefined) {
    shared = { mutex: new AsyncMutex(), drivers: 0 }
    locks.set(key, shared)
  }
  shared.drivers++
  const entry = shared
  let released = false
  return {
    mutex: entry.mutex,
    release() {
      if (released) return
      released = true
      entry.drivers--
      if (entry.drivers === 0 && locks.get(key) === entry) locks.delete(key)
    },
  }
}
