// A flag given twice is refused by every command, switches included (as `proxy --check
// --check` is): the second one is a typo or a script's mistake, never a meaning.
import { EventEmitter } from 'node:events'
import { describe, expect, it } from 'vitest'
import { outboxCommand } from '../../src/cli/outbox.js'
import { relayCommand } from '../../src/cli/relay.js'
import { sagaCommand } from '../../src/cli/saga.js'
import { type CapturedEntry, runCaptured } from './captured.js'

const relay: CapturedEntry = (args, deps) =>
  relayCommand(args, {
    ...deps,
    env: { HOOK: 'a-webhook-secret-long-enough' },
    signals: new EventEmitter(),
  })

describe('a switch given twice', () => {
  const cases: ReadonlyArray<{
    name: string
    entry: CapturedEntry
    args: string[]
    twice: string
  }> = [
    { name: 'outbox', entry: outboxCommand, args: ['stats', '--json', '--json'], twice: '--json' },
    { name: 'outbox', entry: outboxCommand, args: ['redrive', '--all', '--all'], twice: '--all' },
    {
      name: 'outbox',
      entry: outboxCommand,
      args: ['prune', '--archive', '--archive'],
      twice: '--archive',
    },
    { name: 'saga', entry: sagaCommand, args: ['list', '--json', '--json'], twice: '--json' },
    {
      name: 'saga',
      entry: sagaCommand,
      args: ['prune', '--include-parked', '--include-parked'],
      twice: '--include-parked',
    },
    {
      name: 'relay',
      entry: relay,
      args: [
        '--broker',
        'https://hooks.example.com/x',
        '--webhook-secret-env',
        'HOOK',
        '--webhook-batch',
        '--webhook-batch',
      ],
      twice: '--webhook-batch',
    },
  ]
  it.each(cases)('$name $args exits 2', async ({ name, entry, args, twice }) => {
    const result = await runCaptured(entry, args)
    expect(result.code).toBe(2)
    expect(result.stderr).toContain(`breakwater ${name}: ${twice} given twice`)
    expect(result.stdout).toBe('')
  })
})
