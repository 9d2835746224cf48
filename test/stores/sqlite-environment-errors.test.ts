// What SQLite says when its file's surroundings fail: a full file system, another process's
// write lock held past the busy timeout, a database that may not be written. better-sqlite3's
// messages ("database or disk is full", "database is locked", "attempt to write a readonly
// database") named no file, so a process with several databases (an outbox file beside a
// SQL-queue file) logged an error that did not say which one, nor why it could not write. Real
// SQLite files: a tiny tmpfs filled to the last block (root only), a child process holding
// BEGIN IMMEDIATE, SQLite's own read-only refusal.
import { execFileSync, spawn } from 'node:child_process'
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { classifyFailure } from '../../src/policies/classify.js'
import {
  createSqliteDriver,
  fromBetterSqlite,
  type SqliteDriver,
  sqlErrorKind,
} from '../../src/stores/index.js'
import { createTestSqlite, type TestSqlite } from '../support/sqlite.js'

const require = createRequire(import.meta.url)
const betterSqlitePath = require.resolve('better-sqlite3')
const BetterSqlite = require('better-sqlite3') as new (
  filename: string,
  options?: { readonly?: boolean },
) => {
  exec(sql: string): void
  prepare(sql: string): { run(...params: unknown[]): unknown }
  close(): void
  readonly inTransaction: boolean
}

/** Mounts a tmpfs of `size` on a fresh folder, or says why it cannot. */
function tinyFileSystem(size: string): { dir: string; unmount(): void } | string {
  if (process.getuid?.() !== 0) return 'mounting a tmpfs needs root'
  const dir = mkdtempSync(join(tmpdir(), 'breakwater-full-'))
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: 'pipe' })
  } catch (error) {
    rmSync(dir, { recursive: true, force: true })
    return `mount -t tmpfs was refused: ${String((error as { stderr?: unknown }).stderr ?? error)}`
  }
  return {
    dir,
    unmount() {
      execFileSync('umount', ['-l', dir])
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

/** Fills the file system holding `dir` to its last block with a file named `filler`. */
function fillUp(dir: string): void {
  const fd = openSync(join(dir, 'filler'), 'w')
  const block = Buffer.alloc(4096, 1)
  try {
    for (;;) writeSync(fd, block)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error
  } finally {
    closeSync(fd)
  }
}

/** The error `promise` rejects with; fails the test when it resolves. */
async function failureOf(promise: Promise<unknown>): Promise<Error & { code?: unknown }> {
  try {
    await promise
  } catch (error) {
    return error as Error & { code?: unknown }
  }
  throw new Error('expected the write to fail')
}

const mounted = tinyFileSystem('4m')
// Probed once: the describe is skipped with the reason rather than failing where mount is refused.
if (typeof mounted !== 'string') mounted.unmount()

describe.skipIf(typeof mounted === 'string')(
  `a SQLite file on a full file system${typeof mounted === 'string' ? ` (skipped: ${mounted})` : ''}`,
  () => {
    it('fails the write whole, names the file and the full disk, and writes again once space is freed', async () => {
      const fs = tinyFileSystem('4m')
      if (typeof fs === 'string') throw new Error(fs)
      const filename = join(fs.dir, 'orders.db')
      let db: SqliteDriver | undefined
      try {
        db = await createSqliteDriver({ filename })
        await db.execute('CREATE TABLE orders (id TEXT PRIMARY KEY, body TEXT NOT NULL)')
        await db.execute('CREATE TABLE events (id TEXT PRIMARY KEY, order_id TEXT NOT NULL)')
        await db.transaction(async (tx) => {
          await tx.execute('INSERT INTO orders (id, body) VALUES ($1, $2)', ['o1', 'small'])
          await tx.execute('INSERT INTO events (id, order_id) VALUES ($1, $2)', ['e1', 'o1'])
        })
        fillUp(fs.dir)
        const failure = await failureOf(
          db.transaction(async (tx) => {
            // Larger than any room left in the WAL file: it must grow, and cannot.
            await tx.execute('INSERT INTO orders (id, body) VALUES ($1, $2)', [
              'o2',
              'x'.repeat(300_000),
            ])
            await tx.execute('INSERT INTO events (id, order_id) VALUES ($1, $2)', ['e2', 'o2'])
          }),
        )
        expect(failure).toMatchObject({ code: 'SQLITE_FULL' })
        expect(failure.message).toContain(filename)
        expect(failure.message).toMatch(/no space left/)
        // The whole transaction rolled back: neither the order nor its event.
        expect(await db.query('SELECT id FROM orders ORDER BY id')).toEqual([{ id: 'o1' }])
        expect(await db.query('SELECT id FROM events ORDER BY id')).toEqual([{ id: 'e1' }])

        rmSync(join(fs.dir, 'filler'))
        await db.transaction(async (tx) => {
          await tx.execute('INSERT INTO orders (id, body) VALUES ($1, $2)', [
            'o3',
            'x'.repeat(300_000),
          ])
          await tx.execute('INSERT INTO events (id, order_id) VALUES ($1, $2)', ['e3', 'o3'])
        })
        expect(await db.query('PRAGMA integrity_check')).toEqual([{ integrity_check: 'ok' }])
        expect(await db.query('SELECT id FROM events ORDER BY id')).toEqual([
          { id: 'e1' },
          { id: 'e3' },
        ])
      } finally {
        await db?.close()
        fs.unmount()
      }
    })

    it('names the file when a new database cannot even be created there', async () => {
      const fs = tinyFileSystem('1m')
      if (typeof fs === 'string') throw new Error(fs)
      try {
        fillUp(fs.dir)
        const filename = join(fs.dir, 'new.db')
        const failure = await failureOf(createSqliteDriver({ filename }))
        expect(failure).toMatchObject({ code: 'SQLITE_FULL' })
        expect(failure.message).toContain(filename)
        expect(failure.message).toMatch(/no space left/)
      } finally {
        fs.unmount()
      }
    })
  },
)

describe('a SQLite file whose write lock another process holds past busyTimeoutMs', () => {
  let file: TestSqlite | undefined
  let db: SqliteDriver | undefined
  afterEach(async () => {
    await db?.close()
    file?.cleanup()
  })

  it('fails with a transient error naming the file and the busy timeout', async () => {
    file = createTestSqlite('busy')
    db = await createSqliteDriver({ filename: file.filename, busyTimeoutMs: 100 })
    await db.execute('CREATE TABLE orders (id TEXT PRIMARY KEY)')
    const holder = spawn(
      process.execPath,
      [
        '-e',
        `const D = require(${JSON.stringify(betterSqlitePath)}); const d = new D(${JSON.stringify(file.filename)});
         d.exec('BEGIN IMMEDIATE'); console.log('held');
         process.stdin.on('end', () => { d.exec('ROLLBACK'); d.close() }); process.stdin.resume()`,
      ],
      { stdio: ['pipe', 'pipe', 'inherit'] },
    )
    try {
      await new Promise<void>((resolve, reject) => {
        holder.stdout.once('data', () => resolve())
        holder.once('exit', (code) => reject(new Error(`the lock holder exited (${code})`)))
      })
      const failure = await failureOf(
        db.transaction((tx) => tx.execute('INSERT INTO orders (id) VALUES ($1)', ['o1'])),
      )
      expect(failure).toMatchObject({ code: 'SQLITE_BUSY' })
      expect(failure.message).toContain(file.filename)
      expect(failure.message).toContain('busyTimeoutMs (100 ms)')
      expect(classifyFailure(failure)).toBe('transient')
      expect(sqlErrorKind(failure)).toBe('busy')
      // A plain write outside a transaction says the same.
      await expect(db.execute('INSERT INTO orders (id) VALUES ($1)', ['o2'])).rejects.toThrow(
        file.filename,
      )
    } finally {
      holder.stdin.end()
      await new Promise((resolve) => holder.once('exit', resolve))
    }
    // Released: the write goes through, and close() finishes.
    await db.execute('INSERT INTO orders (id) VALUES ($1)', ['o1'])
    expect(await db.query('SELECT id FROM orders')).toEqual([{ id: 'o1' }])
  })
})

// SQLITE_FULL also comes from the page limit an application sets with PRAGMA max_page_count to
// cap a database's size, on a disk with room to spare: the message said "no space left on its
// file system", sending the reader to a disk that was not full.
describe('a SQLite database that reached its max_page_count', () => {
  let file: TestSqlite | undefined
  afterEach(() => file?.cleanup())

  it('names the page limit, not a full file system, and is not retried by default', async () => {
    file = createTestSqlite('page-limit')
    const db = await createSqliteDriver({ filename: file.filename })
    try {
      await db.execute('CREATE TABLE orders (id TEXT PRIMARY KEY, body TEXT NOT NULL)')
      const [{ page_count: pages } = { page_count: 0 }] = await db.query<{ page_count: number }>(
        'PRAGMA page_count',
      )
      await db.execute(`PRAGMA max_page_count = ${pages + 2}`)
      const failure = await failureOf(
        db.transaction((tx) =>
          tx.execute('INSERT INTO orders (id, body) VALUES ($1, $2)', ['o1', 'x'.repeat(100_000)]),
        ),
      )
      expect(failure).toMatchObject({ code: 'SQLITE_FULL' })
      expect(failure.message).toContain(file.filename)
      expect(failure.message).toContain(`max_page_count set on this connection (${pages + 2} pages`)
      expect(failure.message).not.toMatch(/no space left/)
      // Not a lock held elsewhere: retrying at once meets the same limit.
      expect(classifyFailure(failure)).toBe('unknown')
      expect(sqlErrorKind(failure)).toBe('other')
      // Raised, the same write goes through.
      await db.execute('PRAGMA max_page_count = 1000000')
      await db.execute('INSERT INTO orders (id, body) VALUES ($1, $2)', ['o1', 'x'.repeat(100_000)])
    } finally {
      await db.close()
    }
    const own = new BetterSqlite(file.filename)
    try {
      own.exec('PRAGMA max_page_count = 1')
      own.exec('BEGIN')
      const failure = await failureOf(
        fromBetterSqlite(own as never).execute('INSERT INTO orders (id, body) VALUES ($1, $2)', [
          'o2',
          'x'.repeat(100_000),
        ]),
      )
      expect(failure).toMatchObject({ code: 'SQLITE_FULL' })
      expect(failure.message).toContain('max_page_count')
      if (own.inTransaction) own.exec('ROLLBACK')
    } finally {
      own.close()
    }
  })
})

describe('a SQLite database that may not be written', () => {
  let file: TestSqlite | undefined
  afterEach(() => file?.cleanup())

  it('names the file in the refusal, through the driver and through fromBetterSqlite', async () => {
    file = createTestSqlite('readonly')
    const db = await createSqliteDriver({ filename: file.filename })
    try {
      await db.execute('CREATE TABLE orders (id TEXT PRIMARY KEY)')
      // SQLite's own read-only refusal (SQLITE_READONLY), as for a file this user may not write.
      await db.execute('PRAGMA query_only = ON')
      const failure = await failureOf(
        db.transaction((tx) => tx.execute('INSERT INTO orders (id) VALUES ($1)', ['o1'])),
      )
      expect(failure).toMatchObject({ code: 'SQLITE_READONLY' })
      expect(failure.message).toContain(file.filename)
      expect(failure.message).toMatch(/cannot be written/)
      expect(classifyFailure(failure)).toBe('unknown')
    } finally {
      await db.close()
    }
    const own = new BetterSqlite(file.filename, { readonly: true })
    try {
      own.exec('BEGIN')
      const failure = await failureOf(
        fromBetterSqlite(own as never).execute('INSERT INTO orders (id) VALUES ($1)', ['o1']),
      )
      expect(failure).toMatchObject({ code: 'SQLITE_READONLY' })
      expect(failure.message).toContain(file.filename)
      own.exec('ROLLBACK')
    } finally {
      own.close()
    }
  })
})
