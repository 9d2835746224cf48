// The crash test's child process: a node:http server whose idempotent handler makes a charge (a
// business write in ctx.tx, awaited or deferred) and answers with the charge read back. The test SIGKILLs it at
// random moments, and it kills itself at named crash points so that every step boundary of the
// protocol is hit on purpose.
//
// Run: node <bundle> [port], bundled by test/support/compiled-fixture.ts
// (prints "listening <port>" when ready)
// Environment:
//   CRASH_DB_URL             the database (sqlite:<file> or postgres://...), already migrated
//   CRASH_LEASE_MS           the idempotency lease (default 500, so takeovers come quickly)
//   CRASH_CLAIM              the claim mode: leased (default) or in-transaction
//   BREAKWATER_CRASH_AT      a crash point (below); the process SIGKILLs itself there
//   BREAKWATER_CRASH_AFTER   ... on the n-th time it gets there (default 1)
//   BREAKWATER_BROKEN        a deliberately wrong handler, to show the checker catches it:
//     business-outside-tx       the charge commits on its own, before the result is recorded
//     respond-before-business   the response is recorded and sent, then the charge is written
//
// Crash points:
//   idempotency:after-claim                       the key is claimed (with claim: 'in-transaction',
//                                                 in the open transaction), the handler has not run
//   idempotency:after-business-write              the charge is written, nothing committed
//   idempotency:before-commit                     result written in ctx.tx, COMMIT not sent
//   idempotency:after-commit-before-response      committed, the client has heard nothing
//   idempotency:after-response-before-business-write   (respond-before-business only)
import { randomUUID } from 'node:crypto'
import { subscribe } from 'node:diagnostics_channel'
import { writeSync } from 'node:fs'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import {
  createIdempotency,
  idempotencyChannelNames,
  idempotencyStatements,
  idempotentHandler,
} from '../../../src/idempotency/index.js'
import { openDatabase, type SqlDriver, type SqlTransaction } from '../../../src/stores/index.js'

const env = (name: string): string => {
  const value = process.env[name]
  if (value === undefined || value === '') throw new Error(`${name} is not set`)
  return value
}

const crashAt = process.env.BREAKWATER_CRASH_AT ?? ''
const crashAfter = Number(process.env.BREAKWATER_CRASH_AFTER ?? '1')
const broken = process.env.BREAKWATER_BROKEN ?? ''
if (!['', 'business-outside-tx', 'respond-before-business'].includes(broken)) {
  throw new Error(`unknown BREAKWATER_BROKEN=${broken}`)
}
let hits = 0

/** Dies here, abruptly, if this is the crash point asked for (and its turn has come). */
function crashPoint(name: string): void {
  if (name !== crashAt || ++hits < crashAfter) return
  // Synchronous, so the test learns which point fired even though nothing is flushed later.
  writeSync(1, `crash ${name}\n`)
  process.kill(process.pid, 'SIGKILL')
  // The signal is delivered at once; block the thread so that not one more line of JS runs.
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10_000)
}

// Wraps the driver the store uses, to crash between the fenced result UPDATE and the COMMIT of
// the same transaction: the store's own statements pass through untouched.
function withCommitCrashPoint(db: SqlDriver): SqlDriver {
  const complete = idempotencyStatements[db.dialect].complete
  return {
    dialect: db.dialect,
    query: (sql, params) => db.query(sql, params),
    execute: (sql, params) => db.execute(sql, params),
    transaction: (fn) =>
      db.transaction(async (tx) => {
        let recordsResult = false
        const watched: SqlTransaction = {
          dialect: tx.dialect,
          query: (sql, params) => {
            if (sql === complete) recordsResult = true
            return tx.query(sql, params)
          },
          execute: (sql, params) => {
            if (sql === complete) recordsResult = true
            return tx.execute(sql, params)
          },
          transaction: (inner) => tx.transaction(inner),
        }
        const result = await fn(watched)
        if (recordsResult) crashPoint('idempotency:before-commit')
        return result
      }),
    close: () => db.close(),
  }
}

const db = await openDatabase(env('CRASH_DB_URL'), { postgres: { maxConnections: 10 } })
const claim = process.env.CRASH_CLAIM ?? 'leased'
if (claim !== 'leased' && claim !== 'in-transaction') {
  throw new Error(`unknown CRASH_CLAIM=${claim}`)
}
const idempotency = createIdempotency({
  store: withCommitCrashPoint(db),
  claim,
  leaseMs: Number(process.env.CRASH_LEASE_MS ?? '500'),
  // Retries of a key whose holder died wait for its lease here instead of bouncing with 409.
  onConcurrent: 'wait',
})
// Published synchronously after COMMIT, before the response is written.
subscribe(idempotencyChannelNames.claimed, () => crashPoint('idempotency:after-claim'))
subscribe(idempotencyChannelNames.recorded, () =>
  crashPoint('idempotency:after-commit-before-response'),
)

const insertCharge =
  'INSERT INTO charges (id, request_key, amount, attempt) VALUES ($1, $2, $3, $4)'

/**
 * About half the keys write the charge with ctx.deferWrite (not awaited: on PostgreSQL it is
 * still unanswered when the read-back and the result's write follow it), the others await it,
 * so every run crashes both forms at every point with the same checker.
 */
function deferredWrite(key: string): boolean {
  return key.charCodeAt(key.length - 1) % 2 === 0
}

const handler = idempotentHandler(
  { idempotency, onError: (error) => console.error(error) },
  async (_req, res, { body, idempotency: ctx }) => {
    if (ctx === undefined) {
      res.writeHead(405).end()
      return
    }
    const { amount } = JSON.parse(body.toString('utf8')) as { amount: number }
    const chargeId = randomUUID()
    const params = [chargeId, ctx.key, amount, ctx.attempt]
    if (broken === 'respond-before-business') {
      res.writeHead(201, { 'content-type': 'application/json', location: `/charges/${chargeId}` })
      res.end(JSON.stringify({ chargeId, key: ctx.key, amount, attempt: ctx.attempt }))
      await new Promise((resolve) => res.once('finish', resolve))
      crashPoint('idempotency:after-response-before-business-write')
      await db.execute(insertCharge, params)
      return
    }
    if (broken === 'business-outside-tx') await db.execute(insertCharge, params)
    else if (deferredWrite(ctx.key)) ctx.deferWrite(insertCharge, params)
    else await ctx.tx.execute(insertCharge, params)
    crashPoint('idempotency:after-business-write')
    const client = broken === 'business-outside-tx' ? db : ctx.tx
    const [row] = await client.query<{ id: string; request_key: string; amount: number | string }>(
      'SELECT id, request_key, amount FROM charges WHERE id = $1',
      [chargeId],
    )
    if (row === undefined) throw new Error(`charge ${chargeId} vanished`)
    res.writeHead(201, { 'content-type': 'application/json', location: `/charges/${row.id}` })
    res.end(
      JSON.stringify({
        chargeId: row.id,
        key: row.request_key,
        amount: Number(row.amount),
        attempt: ctx.attempt,
      }),
    )
  },
)

const server = createServer(handler)
server.listen({ port: Number(process.argv[2] ?? '0'), host: '127.0.0.1', backlog: 1024 }, () => {
  process.stdout.write(`listening ${(server.address() as AddressInfo).port}\n`)
})
