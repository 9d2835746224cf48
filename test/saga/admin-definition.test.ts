// The admin view of an instance whose definition is in question. A worker claims an instance by
// its `definition` column (`name@version`) and reports one whose `name` or `version` was changed
// apart from it (STORED_DATA_INVALID); it reports the due instances of a definition it lacks
// (`definition-missing`) and parks one whose stored steps are not its definition's. listSagas
// and getSaga (`saga list`, `saga show`) showed all of them as stored, as ordinary instances:
// now they say why (`definitionProblem`), without failing the listing, and against the
// definitions given (`definitions`, `--module`) for the ones only a registry can tell. Real
// SQLite and PostgreSQL.
import { randomUUID } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createSagaWorker,
  defineSaga,
  getSaga,
  listSagas,
  type SagaEvent,
  startSaga,
} from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { greeting } from '../fixtures/saga/cli-sagas.js'
import { optionRefusal } from '../support/unknown-option.js'
import { dbTargets, sqliteDb, type TestDb } from './databases.js'
import { runSagaCommand } from './saga-command.js'

const sagasModule = fileURLToPath(new URL('../fixtures/saga/cli-sagas.ts', import.meta.url))

const oneStep = (name: string, version: number, step = 'only') =>
  defineSaga({ name, version, steps: [{ name: step, action: async () => ({}) }] })

describe.each(dbTargets)('the admin view of an instance definition on $dialect', (target) => {
  let t: TestDb
  const clock = new ManualClock(1_700_000_000_000)
  beforeAll(async () => {
    t = await target.open('saga_admin_definition')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('marks a row whose name or version is not its definition column, which the worker reports', async () => {
    const saga = oneStep(`edited-${randomUUID().slice(0, 8)}`, 1)
    const good = (await startSaga(t.db, saga, null, { clock })).id
    const version = (await startSaga(t.db, saga, null, { clock })).id
    const renamed = (await startSaga(t.db, saga, null, { clock })).id
    await t.db.execute('UPDATE breakwater_sagas SET version = 2 WHERE id = $1', [version])
    await t.db.execute(`UPDATE breakwater_sagas SET name = 'someone-else' WHERE id = $1`, [renamed])

    const listed = await listSagas(t.db, { limit: 100_000 })
    const byId = (id: string) => listed.find((s) => s.id === id)
    expect(byId(good)).toMatchObject({ definition: saga.key, definitionProblem: undefined })
    expect(byId(version)).toMatchObject({
      name: saga.name,
      version: 2,
      definition: saga.key,
      definitionProblem: 'definition-mismatch',
    })
    expect(byId(renamed)).toMatchObject({
      name: 'someone-else',
      definition: saga.key,
      definitionProblem: 'definition-mismatch',
    })
    expect(await getSaga(t.db, version)).toMatchObject({
      version: 2,
      definition: saga.key,
      definitionProblem: 'definition-mismatch',
    })
    expect(await getSaga(t.db, good)).toMatchObject({ definitionProblem: undefined })

    // What the worker makes of the same row: reported, not run.
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const errors: SagaEvent[] = []
    worker.events.on((e) => {
      if (e.type === 'error') errors.push(e)
    })
    await worker.poll()
    await worker.stop()
    expect(errors.map((e) => e.sagaId).sort()).toEqual([version, renamed].sort())
  })

  it('given definitions, marks unfinished instances of an unknown name or version or other steps', async () => {
    const name = `known-${randomUUID().slice(0, 8)}`
    const v1 = oneStep(name, 1)
    const v2 = oneStep(name, 2)
    const changed = oneStep(name, 1, 'renamed-step')
    const stray = oneStep(`stray-${randomUUID().slice(0, 8)}`, 1)
    const ok = (await startSaga(t.db, v1, null, { clock })).id
    const newer = (await startSaga(t.db, v2, null, { clock })).id
    const unknown = (await startSaga(t.db, stray, null, { clock })).id
    const steps = (await startSaga(t.db, changed, null, { clock, id: randomUUID() })).id
    // A finished instance of a version no longer registered is no problem: none needs a worker.
    const done = await createSagaWorker({ db: t.db, sagas: [v2], clock }).run(v2, null)
    expect(done.status).toBe('completed')

    const definitions = [v1]
    const listed = await listSagas(t.db, { limit: 100_000, definitions })
    const problem = (id: string) => listed.find((s) => s.id === id)?.definitionProblem
    expect(problem(ok)).toBeUndefined()
    expect(problem(newer)).toBe('unknown-version')
    expect(problem(unknown)).toBe('unknown-name')
    expect(problem(steps)).toBe('steps-changed')
    expect(problem(done.id)).toBeUndefined()
    for (const [id, expected] of [
      [ok, undefined],
      [newer, 'unknown-version'],
      [unknown, 'unknown-name'],
      [steps, 'steps-changed'],
      [done.id, undefined],
    ] as const) {
      expect((await getSaga(t.db, id, { definitions }))?.definitionProblem).toBe(expected)
    }
    // Without definitions nothing tells: none of them is marked.
    for (const s of await listSagas(t.db, { name })) expect(s.definitionProblem).toBeUndefined()
    expect((await getSaga(t.db, newer))?.definitionProblem).toBeUndefined()
  })

  it('refuses definitions that are not from defineSaga, and an unknown getSaga option', async () => {
    const fake = { name: 'x', version: 1, key: 'x@1', stepNames: ['a'] }
    const listRefusal = await optionRefusal(() => listSagas(t.db, { definitions: [fake] as never }))
    expect(listRefusal.option).toBe('options.definitions[0]')
    const getRefusal = await optionRefusal(() =>
      getSaga(t.db, 'any', { definitions: 'all' as never }),
    )
    expect(getRefusal.option).toBe('options.definitions')
    const misspelt = await optionRefusal(() => getSaga(t.db, 'any', { definition: [] } as never))
    expect(misspelt.option).toBe('options.definition')
  })
})

describe('`breakwater saga list|show` on an instance definition in question, on SQLite', () => {
  let t: TestDb
  const clock = new ManualClock(1_700_000_000_000)
  beforeAll(async () => {
    t = await sqliteDb.open('saga_admin_definition_cli')
  })
  afterAll(async () => {
    await t?.close()
  })

  const run = (args: string[]) => runSagaCommand(t, args)

  it('marks the row, says why under the table and in show, and checks --module definitions', async () => {
    const edited = (await startSaga(t.db, greeting, { name: 'a' }, { clock })).id
    await t.db.execute('UPDATE breakwater_sagas SET version = 7 WHERE id = $1', [edited])
    const newer = oneStep(greeting.name, 2)
    const unknown = (await startSaga(t.db, newer, null, { clock })).id

    const list = await run(['list'])
    expect(list.code).toBe(0)
    const row = list.out.split('\n').find((l) => l.startsWith(edited))
    expect(row).toContain('cli-greeting@7 (definition-mismatch)')
    expect(list.out).toContain(
      `saga ${edited}: its name and version (cli-greeting@7) are not those of its definition column (cli-greeting@1), which workers run it by`,
    )
    // Without --module, the version no worker may have is not in question.
    expect(list.out.split('\n').find((l) => l.startsWith(unknown))).not.toContain('(')

    const withModule = await run(['list', '--module', sagasModule])
    expect(withModule.code).toBe(0)
    expect(withModule.out.split('\n').find((l) => l.startsWith(unknown))).toContain(
      'cli-greeting@2 (unknown-version)',
    )
    expect(withModule.out).toContain(
      `saga ${unknown}: cli-greeting@2 is not among the definitions of --module (cli-greeting has version 1)`,
    )

    const json = await run(['list', '--json', '--module', sagasModule])
    const listed = JSON.parse(json.out) as Array<{ id: string; definitionProblem?: string }>
    expect(listed.find((s) => s.id === unknown)?.definitionProblem).toBe('unknown-version')
    expect(listed.find((s) => s.id === edited)?.definitionProblem).toBe('definition-mismatch')

    const show = await run(['show', edited])
    expect(show.code).toBe(0)
    expect(show.out).toContain('name      cli-greeting@7')
    expect(show.out).toContain(
      'definition cli-greeting@1 (definition-mismatch: its name and version (cli-greeting@7) are not those of its definition column (cli-greeting@1), which workers run it by',
    )
    const showModule = await run(['show', unknown, '--module', sagasModule])
    expect(showModule.code).toBe(0)
    expect(showModule.out).toContain('(unknown-version: ')

    const missing = await run([
      'list',
      '--module',
      fileURLToPath(new URL('nowhere.ts', import.meta.url)),
    ])
    expect(missing.code).toBe(2)
    expect(missing.err).toContain('--module: cannot load')
    const bad = await run([
      'show',
      edited,
      '--module',
      fileURLToPath(new URL('../fixtures/saga/cli-bad-sagas.ts', import.meta.url)),
    ])
    expect(bad).toMatchObject({ code: 2, out: '' })
    expect(bad.err).toContain('--module: sagas[0]: expected a saga definition from defineSaga()')
    expect(bad.err).toContain('usage: breakwater saga')
  })
})
