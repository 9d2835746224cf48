// `breakwater saga show` on a timeline entry changed outside breakwater (a manual edit, another
// writer's bug, a restored backup). One entry whose detail was not a JSON object failed the
// whole of `saga show` and `saga show --json` (exit 1), hiding the instance and the rest of its
// timeline; one whose detail held `"error": null` failed it with a bare TypeError; a blob in its
// kind, step or worker (SQLite keeps one in a TEXT column) came out as a Buffer. The entry is
// now shown with the others, marked: its `unreadable` names each column it cannot read with what
// is wrong, in the table and in --json. A detail field that is only shown and not of its kind is
// shown as unreadable in the table and as stored in --json. Nothing is written. Real SQLite and
// PostgreSQL.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createSagaWorker, defineSaga, getSagaTimeline } from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type TestDb } from './databases.js'
import { runSagaCommand } from './saga-command.js'

describe.each(dbTargets)(
  'saga show on a timeline entry changed outside breakwater, on $dialect',
  (target) => {
    let t: TestDb
    const clock = new ManualClock(1_700_000_000_000)
    beforeAll(async () => {
      t = await target.open('saga_cli_timeline_entries')
    })
    afterAll(async () => {
      await t?.close()
    })

    // A completed two-step instance, with its timeline as read before any edit.
    async function finished() {
      const saga = defineSaga({
        name: `timeline-${randomUUID().slice(0, 8)}`,
        version: 1,
        steps: [
          { name: 'reserve', action: async () => ({}) },
          { name: 'charge', action: async () => ({}) },
        ],
      })
      const worker = createSagaWorker({ db: t.db, sagas: [saga], clock, workerId: 'w-1' })
      const { id } = await worker.run(saga, {})
      await worker.stop()
      const before = await getSagaTimeline(t.db, id)
      expect(before.map((e) => `${e.kind}:${e.step ?? ''}`)).toEqual([
        'step-completed:reserve',
        'step-completed:charge',
        'completed:',
      ])
      return { id, before, edited: before[0]! }
    }

    const stored = (id: string) =>
      t.db.query('SELECT * FROM breakwater_saga_events WHERE saga_id = $1 ORDER BY seq', [id])

    // `saga show` (table, --json) on `id`: exit 0, every entry there, the rows left as they are.
    async function show(id: string, entries: number) {
      const rows = await stored(id)
      const json = await runSagaCommand(t, ['show', id, '--json'])
      expect(json).toMatchObject({ code: 0, err: '' })
      const timeline = (JSON.parse(json.out) as { timeline: Record<string, unknown>[] }).timeline
      expect(timeline).toHaveLength(entries)
      const text = await runSagaCommand(t, ['show', id])
      expect(text).toMatchObject({ code: 0, err: '' })
      const lines = text.out.split('\n')
      const shown = lines.slice(lines.indexOf('timeline') + 2).filter((l) => l !== '')
      expect(shown).toHaveLength(entries)
      expect(await stored(id)).toEqual(rows)
      return { timeline, lines: shown }
    }

    const columnCases: [string, string, string | RegExp][] = [
      ['detail', '{bad', /^is not JSON \(/],
      ['detail', 'null', 'is not a JSON object: null'],
      ['detail', '[1]', 'is not a JSON object: an array of 1'],
    ]
    it.each(columnCases)(
      '%s %s: the entry is marked with what is wrong, the others shown',
      async (column, bad, problem) => {
        const { id, before, edited } = await finished()
        await t.db.execute(`UPDATE breakwater_saga_events SET ${column} = $1 WHERE seq = $2`, [
          bad,
          edited.seq,
        ])
        const timeline = await getSagaTimeline(t.db, id)
        expect(timeline.slice(1)).toEqual(before.slice(1))
        expect(timeline[0]).toEqual({
          ...edited,
          [column]: undefined,
          unreadable: [{ column, problem: expect.stringMatching(problem) }],
        })

        const shown = await show(id, before.length)
        expect(shown.timeline[0]).toMatchObject({
          seq: edited.seq,
          kind: 'step-completed',
          step: 'reserve',
          unreadable: [{ column, problem: expect.stringMatching(problem) }],
        })
        expect(shown.timeline[0]).not.toHaveProperty(column)
        expect(shown.lines[0]).toContain('step-completed  reserve  attempt 1')
        expect(shown.lines[0]).toMatch(
          new RegExp(
            `event ${edited.seq} cannot be read \\(changed outside breakwater\\): ${column} is `,
          ),
        )
        expect(shown.lines[1]).toContain('step-completed  charge')
        expect(shown.lines[1]).not.toContain('cannot be read')
      },
    )

    if (target.dialect === 'sqlite')
      // SQLite keeps a blob in a TEXT column; the driver reads it as a Buffer.
      it.each(['kind', 'step', 'worker', 'detail'])(
        '%s holding a blob: the entry is marked, not shown as a Buffer',
        async (column) => {
          const { id, before, edited } = await finished()
          await t.db.execute(
            `UPDATE breakwater_saga_events SET ${column} = X'ff7b7d' WHERE seq = $1`,
            [edited.seq],
          )
          const timeline = await getSagaTimeline(t.db, id)
          expect(timeline.slice(1)).toEqual(before.slice(1))
          expect(timeline[0]).toEqual({
            ...edited,
            [column]: undefined,
            unreadable: [{ column, problem: expect.stringContaining('not text') }],
          })
          const shown = await show(id, before.length)
          expect(JSON.stringify(shown.timeline)).not.toContain('Buffer')
          expect(shown.lines[0]).toContain(`event ${edited.seq} cannot be read`)
          expect(shown.lines[0]).toContain(`${column} is`)
          if (column !== 'detail') expect(shown.lines[0]).toContain('(unreadable)')
        },
      )

    // Written by breakwater as an error object, a time, text: shown, never acted on.
    it.each([
      ['{"error":null}', 'error (unreadable error)'],
      ['{"error":"boom"}', 'error (unreadable error)'],
      ['{"error":{"name":7,"message":"x"}}', 'error (unreadable error)'],
      ['{"retryAt":"soon"}', 'retry at (unreadable)'],
      ['{"retryAt":-5}', 'retry at (unreadable)'],
      ['{"until":1.5}', 'until (unreadable)'],
      ['{"reason":5}', 'reason: (unreadable)'],
      ['{"previousOwner":{}}', '(lease of (unreadable) expired)'],
    ])('detail %s: shown as unreadable in the table, as stored in --json', async (detail, said) => {
      const { id, before, edited } = await finished()
      await t.db.execute('UPDATE breakwater_saga_events SET detail = $1 WHERE seq = $2', [
        detail,
        edited.seq,
      ])
      const shown = await show(id, before.length)
      expect(shown.timeline[0]).toMatchObject({ detail: JSON.parse(detail) })
      expect(shown.timeline[0]).not.toHaveProperty('unreadable')
      expect(shown.lines[0]).toContain(said)
      expect(shown.lines[0]).not.toContain('undefined')
    })
  },
)
