// Under constant multi-process use some reader is always open on an older snapshot, so SQLite's
// own passive checkpoints never finish and the WAL never starts over: exploratory testing saw it
// reach 466 MB beside a 108 MB database, and stay there. The driver empties it (waiting briefly
// for the readers) once it passes walSizeLimitBytes.
import { statSync } from 'node:fs'
import { Worker } from 'node:worker_threads'
import { afterEach, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createSqliteDriver } from '../../src/stores/sqlite.js'
import { createTestSqlite, type TestSqlite } from '../support/sqlite.js'

const mib = 1024 * 1024

describe('SQLite driver: the WAL stays bounded', () => {
  let file: TestSqlite | undefined
  afterEach(() => file?.cleanup())

  it('under readers that always keep a snapshot open, as busy processes do', async () => {
    file = createTestSqlite('wal-bound')
    const { filename } = file
    const db = await createSqliteDriver({ filename, walSizeLimitBytes: mib })
    await db.execute('CREATE TABLE blobs (id INTEGER PRIMARY KEY, body BLOB NOT NULL)')
    const stop = new SharedArrayBuffer(4)
    const readers = new Worker(new URL('./fixtures/overlapping-readers.mjs', import.meta.url), {
      workerData: { filename, stop },
    })
    const done = new Promise<number>((resolve, reject) => {
      readers.on('message', (message) => {
        if (typeof message === 'number') resolve(message)
      })
      readers.once('error', reject)
    })
    await new Promise((resolve) => readers.once('message', resolve))
    // About 16 KB of WAL per transaction, 1500 of them: about 24 MB unless the WAL starts over.
    // The table stays small (old rows are deleted), so the WAL is all that grows.
    const body = Buffer.alloc(8 * 1024, 7)
    let largest = 0
    try {
      for (let i = 0; i < 1500; i++) {
        await db.transaction(async (tx) => {
          await tx.execute('INSERT INTO blobs (body) VALUES ($1)', [body])
          await tx.execute('DELETE FROM blobs WHERE id < $1', [i - 10])
        })
        largest = Math.max(largest, statSync(`${filename}-wal`).size)
      }
    } finally {
      new Int32Array(stop)[0] = 1
    }
    const reads = await done
    await db.close()
    // The readers really overlapped the writes (the bound is not met for want of readers).
    expect(reads).toBeGreaterThan(1500)
    // The bound plus what the 32 transactions between two looks at the size add (about 0.5 MB),
    // with room for two checkpoints in a row that gave up (the reader thread not scheduled for
    // the 100 ms the checkpoint waits, on a loaded machine): each is retried 1 MiB later.
    expect(largest).toBeLessThan(4 * mib)
  })

  it('refuses a walSizeLimitBytes under 1 MiB, naming it', async () => {
    await expect(
      createSqliteDriver({ filename: ':memory:', walSizeLimitBytes: 64 }),
    ).rejects.toThrow(new InvalidOptionError('walSizeLimitBytes', 'an integer >= 1048576', 64))
  })

  it('sets journal_size_limit to walSizeLimitBytes, 16 MiB by default', async () => {
    file = createTestSqlite('wal-limit')
    const plain = await createSqliteDriver({ filename: file.filename })
    const tuned = await createSqliteDriver({ filename: file.filename, walSizeLimitBytes: 2 * mib })
    try {
      expect(await plain.query('PRAGMA journal_size_limit')).toEqual([
        { journal_size_limit: 16 * mib },
      ])
      expect(await tuned.query('PRAGMA journal_size_limit')).toEqual([
        { journal_size_limit: 2 * mib },
      ])
    } finally {
      await plain.close()
      await tuned.close()
    }
  })
})
