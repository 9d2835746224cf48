// `breakwater outbox dead|redrive|stats|prune` on real SQLite and PostgreSQL. Events are
// dead-lettered for real: a relay publishes to a webhook receiver that refuses a poison
// message with 400 (not retryable), with maxAttempts 1.
import { randomUUID } from 'node:crypto'
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import {
  createWebhookPublisher,
  verifyWebhookSignature,
  WEBHOOK_SIGNATURE_HEADER,
} from '../../src/brokers/index.js'
import { outboxCommand } from '../../src/cli/outbox.js'
import {
  createInbox,
  createOutbox,
  createRelay,
  inboxTable,
  listDead,
  type OutboxEvent,
  outboxArchiveTable,
  outboxTable,
} from '../../src/outbox/index.js'
import { count, dbTargets, pendingCount, until } from '../outbox/support.js'
import { runCli } from '../process/cli-process.js'
import { listenOnLoopback } from '../support/loopback.js'
import { runCaptured } from './captured.js'

const secret = `whsec-${randomUUID()}`
const outbox = createOutbox()
const cleanups: Array<() => Promise<void> | void> = []
afterAll(async () => {
  for (const fn of cleanups.reverse()) await fn()
})

function run(args: string[]) {
  return runCaptured(outboxCommand, args)
}

/** Distinct ids in first-arrival order (a relay may deliver a message more than once). */
function distinct(accepted: ReadonlyArray<{ readonly id: string }>): string[] {
  return [...new Set(accepted.map((a) => a.id))]
}

/** A webhook receiver that verifies signatures and refuses poison while `refusePoison` is on. */
async function receiver() {
  const state = { refusePoison: true, accepted: [] as Array<{ id: string; key: string }> }
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const body = Buffer.concat(chunks)
      if (!verifyWebhookSignature(secret, req.headers[WEBHOOK_SIGNATURE_HEADER], body).ok) {
        res.writeHead(401).end()
        return
      }
      const m = JSON.parse(body.toString('utf8')) as {
        id: string
        key: string
        payload: { poison?: boolean }
      }
      if (m.payload.poison === true && state.refusePoison) {
        res.writeHead(400).end('unknown order type')
        return
      }
      state.accepted.push({ id: m.id, key: m.key })
      res.writeHead(204).end()
    })
  })
  const serverPort = await listenOnLoopback(server)
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  )
  return { ...state, state, url: `http://127.0.0.1:${serverPort}/hook` }
}

describe.each(dbTargets)('breakwater outbox on $dialect', (target) => {
  it('lists a dead-lettered event, refuses bad arguments, and redrives it so it is published in order', async () => {
    const { db, url, close } = await target.open(`outbox_cli_${target.dialect}`)
    cleanups.push(close)
    const hook = await receiver()
    const publisher = createWebhookPublisher({ url: hook.url, secret, retry: false })
    cleanups.push(() => publisher.close())
    const relay = createRelay({
      db,
      publisher,
      maxAttempts: 1,
      pollIntervalMs: 5,
      maxPollIntervalMs: 20,
      retention: false,
    })
    await relay.start()
    cleanups.push(() => relay.stop())

    const run_ = randomUUID().slice(0, 8)
    const event = (aggregate: string, n: number, poison = false): OutboxEvent => ({
      id: `${run_}-${aggregate}-${n}`,
      aggregateType: 'order',
      aggregateId: `${run_}-${aggregate}`,
      type: poison ? 'order-exploded' : 'order-placed',
      payload: { n, ...(poison ? { poison: true } : {}) },
    })
    const poisonId = `${run_}-p-0`
    await db.transaction((tx) =>
      outbox.enqueue(tx, [
        event('a', 0),
        event('p', 0, true),
        event('a', 1),
        event('p', 1),
        event('b', 0),
      ]),
    )
    relay.wake()
    await until(
      async () => (await listDead(db)).length === 1,
      'the poison event to be dead-lettered',
    )
    await until(
      () => distinct(hook.state.accepted).length === 3,
      'the healthy events to be delivered',
    )
    // The poison holds back its own aggregate only.
    expect(distinct(hook.state.accepted).sort()).toEqual(
      [`${run_}-a-0`, `${run_}-a-1`, `${run_}-b-0`].sort(),
    )

    const json = await run(['dead', '--db', url, '--json'])
    expect(json.code, json.stderr).toBe(0)
    const dead = JSON.parse(json.stdout) as Array<Record<string, unknown>>
    expect(dead).toHaveLength(1)
    expect(dead[0]).toMatchObject({
      eventId: poisonId,
      aggregateId: `${run_}-p`,
      type: 'order-exploded',
      attempts: 1,
    })
    expect(String(dead[0]!.lastError)).toContain('answered 400')
    expect(String(dead[0]!.deadAt)).toMatch(/^\d{4}-\d\d-\d\dT/)

    const table = await run(['dead', '--db', url])
    expect(table.code).toBe(0)
    expect(table.stdout.split('\n')[0]).toMatch(
      /^ID\s+EVENT ID\s+AGGREGATE\s+TYPE\s+TOPIC\s+ATTEMPTS/,
    )
    expect(table.stdout).toContain(poisonId)
    expect(table.stdout).toContain(`order/${run_}-p`)

    const stats = await run(['stats', '--db', url, '--json'])
    expect(stats.code).toBe(0)
    expect(JSON.parse(stats.stdout)).toMatchObject({ pending: 1, dead: 1 })
    expect(JSON.parse(stats.stdout).lagMs).toBeGreaterThan(0)

    // Bad arguments exit 2 with the problem named; an id that is not dead exits 1.
    for (const [args, message] of [
      [['redrive', '--db', url], 'outbox redrive needs --all or at least one --id <event id>'],
      [['redrive', '--db', url, '--all', '--id', poisonId], 'give either --all or --id, not both'],
      [['dead', '--db', url, '--limit', '0'], '--limit must be an integer from 1 to 100000'],
      [['dead', '--db', url, '--all'], 'unknown option "--all" for "outbox dead"'],
      [
        ['dead', '--db', url, '--after-id', '9007199254740992'],
        '--after-id must be a row id (an integer from 0 to 9007199254740991)',
      ],
      [['purge', '--db', url], 'unknown command "purge"'],
      [[], 'a command is needed'],
    ] as Array<[string[], string]>) {
      const result = await run(args)
      expect(result.code, args.join(' ')).toBe(2)
      expect(result.stderr).toContain(`breakwater outbox: ${message}`)
    }
    const unknown = await run(['redrive', '--db', url, '--id', 'no-such-event'])
    expect(unknown.code).toBe(1)
    expect(unknown.stderr).toContain('1 of the given ids was not a dead-lettered event')
    const unknowns = await run(['redrive', '--db', url, '--id', 'no-such', '--id', 'nor-this'])
    expect(unknowns.code).toBe(1)
    expect(unknowns.stderr).toContain('2 of the given ids were not dead-lettered events')
    expect(await listDead(db)).toHaveLength(1)

    // The receiver is fixed; redrive: the poison goes out, then the event held behind it.
    hook.state.refusePoison = false
    const redriven =
      target.dialect === 'sqlite'
        ? await run(['redrive', '--db', url, '--id', poisonId])
        : await run(['redrive', '--db', url, '--all'])
    expect(redriven.code, redriven.stderr).toBe(0)
    expect(redriven.stdout).toMatch(/^redrove 1 (of 1 event|dead-lettered event)\n$/)
    relay.wake()
    await until(
      () => distinct(hook.state.accepted).length === 5,
      'the redriven events to be delivered',
    )
    expect(distinct(hook.state.accepted.filter((a) => a.key === `${run_}-p`))).toEqual([
      poisonId,
      `${run_}-p-1`,
    ])
    await until(async () => (await pendingCount(db)) === 0, 'everything marked published')
    expect((await run(['dead', '--db', url])).stdout).toBe('no dead-lettered events\n')
    expect(JSON.parse((await run(['stats', '--db', url, '--json'])).stdout)).toEqual({
      pending: 0,
      dead: 0,
      stranded: 0,
      lagMs: 0,
    })

    // Prune: nothing is a day old yet; with no window, the published events go to the archive
    // (nothing pending or dead is left to keep) and the inbox records go.
    const inbox = createInbox({ consumer: `cli-${run_}` })
    await db.transaction((tx) => inbox.handle(tx, { id: `${run_}-m1` }, async () => 'handled'))
    const young = await run(['prune', '--db', url])
    expect(young).toMatchObject({
      code: 0,
      stdout: 'removed 0 published events\nremoved 0 inbox records\n',
    })
    // The inbox is the dedupe window: a window shorter than an hour (0d emptied it) is refused,
    // naming the flag, before anything is removed, unless the operator says that is meant.
    for (const window of ['0d', '0ms', '59m']) {
      const short = await run([
        'prune',
        '--db',
        url,
        '--older-than',
        '0s',
        '--inbox-older-than',
        window,
      ])
      expect(short.code, window).toBe(2)
      expect(short.stderr).toContain(
        `breakwater outbox: --inbox-older-than ${window} is shorter than 1h`,
      )
      expect(short.stderr).toContain('handled twice')
      expect(short.stderr).toContain('--allow-short-inbox-window')
    }
    expect(await count(db, inboxTable)).toBe(1)
    expect(await count(db, outboxTable)).toBe(5)
    expect((await run(['prune', '--db', url, '--inbox-older-than', '1h'])).code).toBe(0)
    expect(await count(db, inboxTable)).toBe(1)
    const archived = await run([
      'prune',
      '--db',
      url,
      '--older-than',
      '0s',
      '--archive',
      '--inbox-older-than',
      '0ms',
      '--allow-short-inbox-window',
    ])
    expect(archived.stdout, archived.stderr).toBe(
      'archived 5 published events\nremoved 1 inbox record\n',
    )
    expect(await count(db, outboxTable)).toBe(0)
    expect(await count(db, outboxArchiveTable)).toBe(5)
    expect(await count(db, inboxTable)).toBe(0)
    for (const [args, message] of [
      [['prune', '--db', url, '--older-than', '7'], '--older-than must be a whole number'],
      [['prune', '--db', url, '--inbox-older-than', 'week'], '--inbox-older-than must be'],
      [['prune', '--db', url, '--archive=yes'], '--archive takes no value'],
      [
        ['prune', '--db', url, '--allow-short-inbox-window'],
        '--allow-short-inbox-window applies only with --inbox-older-than',
      ],
      [['stats', '--db', url, '--archive'], 'unknown option "--archive" for "outbox stats"'],
    ] as Array<[string[], string]>) {
      const result = await run(args)
      expect(result.code, args.join(' ')).toBe(2)
      expect(result.stderr).toContain(`breakwater outbox: ${message}`)
    }

    if (target.dialect === 'sqlite') {
      // The same command through the real command line.
      const cli = await runCli(['outbox', 'dead', '--db', url, '--json'])
      expect(cli.code, cli.stderr).toBe(0)
      expect(JSON.parse(cli.stdout)).toEqual([])
    }
  })
})

describe('breakwater outbox: database problems', () => {
  it('prints its usage for --help or -h anywhere, and refuses a malformed postgres URL with exit 2', async () => {
    for (const args of [
      ['--help'],
      ['stats', '--help'],
      ['prune', '-h'],
      ['dead', '--db', 'x', '--help'],
    ]) {
      const result = await run(args)
      expect(result.code).toBe(0)
      expect(result.stdout).toContain('usage: breakwater outbox')
    }
    const bad = await run(['stats', '--db', 'postgres://app:hunter2-pw@127.0.0.1:abc/app'])
    expect(bad.code).toBe(2)
    expect(bad.stderr).toContain('a valid postgres:// URL')
    expect(bad.stderr).not.toContain('hunter2')
  })

  it('an unmigrated database exits 1 with a hint; a bad URL exits 2 without its password', async () => {
    // A bad argument, known before anything opens (exit 2, as migrate answers it).
    const memory = await run(['dead', '--db', 'sqlite::memory:'])
    expect(memory.code).toBe(2)
    expect(memory.stderr).toContain('--db: an in-memory database is empty and lasts one command')
    const dir = mkdtempSync(join(tmpdir(), 'breakwater-cli-'))
    try {
      // A mistyped path: nothing is created.
      const typo = await run(['stats', '--db', `sqlite:${join(dir, 'typo', 'app.db')}`])
      expect(typo.code).toBe(1)
      expect(typo.stderr).toContain('no such database file')
      expect(readdirSync(dir)).toEqual([])
      // Another program's database: refused, and left byte for byte as it was (opening it for
      // writing would switch it to WAL mode for good).
      const other = join(dir, 'other.db')
      const Database = (await import('better-sqlite3')).default
      const foreign = new Database(other)
      foreign.exec('CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)')
      foreign.close()
      const before = readFileSync(other)
      const refused = await run(['stats', '--db', `sqlite:${other}`])
      expect(refused.code).toBe(1)
      expect(refused.stderr).toContain('not a breakwater database')
      expect(refused.stderr).toContain(`run \`breakwater migrate --db sqlite:${other}\` first`)
      expect(readFileSync(other).equals(before)).toBe(true)
      expect(readdirSync(dir).sort()).toEqual(['other.db'])
      // Not a database at all.
      const text = join(dir, 'notes.txt')
      writeFileSync(text, 'hello')
      const notDb = await run(['stats', '--db', `sqlite:${text}`])
      expect(notDb.code).toBe(1)
      expect(notDb.stderr).toContain('not a readable SQLite database')
      expect(readFileSync(text, 'utf8')).toBe('hello')
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
    const bad = await run(['stats', '--db', 'mysql://root:hunter2-pw@db/app'])
    expect(bad.code).toBe(2)
    expect(bad.stderr).toContain('--db:')
    expect(bad.stderr).not.toContain('hunter2')
  })
})
