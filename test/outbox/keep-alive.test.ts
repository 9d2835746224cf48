// A started relay, and a running SQL-queue subscription, hold the Node.js process open as a
// listening server does (keepAlive, default true): on SQLite nothing else does, and a script
// that only started one (the docs' own examples) used to exit within milliseconds, leaving its
// partition leases held until they expired. With keepAlive: false the process may exit.
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createOutbox,
  createRelay,
  createSqlQueue,
  migrateOutbox,
  migrateSqlQueue,
  type SqlQueue,
} from '../../src/outbox/index.js'
import { openDatabase, type SqlDriver } from '../../src/stores/index.js'
import { type CliProcess, spawnNode } from '../process/cli-process.js'
import { compiledFixture } from '../support/compiled-fixture.js'
import { createTestSqlite, type TestSqlite } from '../support/sqlite.js'

const fixture = fileURLToPath(new URL('../fixtures/outbox/keep-alive-process.ts', import.meta.url))

let sqlite: TestSqlite
let db: SqlDriver
let bundle: string
let queue: SqlQueue

beforeAll(async () => {
  sqlite = createTestSqlite('keep-alive')
  db = await openDatabase(sqlite.url)
  await migrateOutbox(db)
  await migrateSqlQueue(db)
  queue = createSqlQueue(db)
  bundle = await compiledFixture(fixture)
})

afterAll(async () => {
  await db?.close()
  sqlite?.cleanup()
})

function start(piece: 'relay' | 'queue', keepAlive: 'default' | 'true' | 'false'): CliProcess {
  return spawnNode([bundle, piece, sqlite.url, keepAlive])
}

const outbox = createOutbox()

// Makes the child poll for work this process wrote: each line it prints for it shows one more
// poll of the database after the child would have exited without keepAlive.
async function enqueue(piece: 'relay' | 'queue', n: number): Promise<void> {
  if (piece === 'relay') {
    await db.transaction(async (tx) => {
      await outbox.enqueue(tx, {
        aggregateType: 'keep-alive',
        aggregateId: `a${n}`,
        type: 'poked',
        payload: { n },
      })
    })
  } else {
    await queue.publisher.publish([
      { id: `m${n}-${Date.now()}`, topic: 'keep-alive', key: `k${n}`, payload: '{}', headers: {} },
    ])
  }
}

describe.each(['relay', 'queue'] as const)('%s on SQLite', (piece) => {
  const seen = piece === 'relay' ? 'published' : 'received'

  for (const keepAlive of ['default', 'true'] as const) {
    it(`holds the process while it runs (keepAlive ${keepAlive}), and lets it exit once stopped`, async () => {
      const child = start(piece, keepAlive)
      try {
        await child.waitForLine((line) => line.ready === true, 'ready')
        for (let n = 1; n <= 2; n++) {
          await enqueue(piece, n)
          await child.waitForLine(
            () => child.lines.filter((line) => line[seen] !== undefined).length >= n,
            `${seen} #${n}`,
          )
        }
        expect(child.child.exitCode).toBeNull()
        child.child.kill('SIGTERM')
        // The handler only stops the piece and closes the database: no process.exit.
        expect(await child.exited).toEqual({ code: 0, signal: null })
        expect(child.lines).toContainEqual({ stopped: true })
      } finally {
        child.kill()
      }
    })
  }

  it('with keepAlive: false, lets the process exit by itself', async () => {
    const child = start(piece, 'false')
    try {
      expect(await child.exited).toEqual({ code: 0, signal: null })
      expect(child.lines).toContainEqual({ ready: true })
      expect(child.lines).not.toContainEqual({ stopped: true })
    } finally {
      child.kill()
    }
  })
})

describe('keepAlive given as something other than a boolean', () => {
  it('is refused by createRelay', () => {
    expect(() =>
      createRelay({ db, publisher: queue.publisher, keepAlive: 'yes' as unknown as boolean }),
    ).toThrow(expect.objectContaining({ option: 'relay.keepAlive', expected: 'a boolean' }))
  })

  it('is refused by createSqlQueue', () => {
    expect(() => createSqlQueue(db, { keepAlive: 1 as unknown as boolean })).toThrow(
      expect.objectContaining({ option: 'sqlQueue.keepAlive', expected: 'a boolean' }),
    )
  })
})
