// Why a shop process exited, from its stderr: Node's report of an uncaught error starts with the
// throwing line's location and source, then the error, then its stack and properties. The
// reason shown is the error's own line, never a location, a blank or a stack frame (found by
// exploratory testing: a broker that was not NATS ended the demo with "notifications exited
// before it was ready:" and nothing after). The fixtures are the stderr of real runs of the
// notifications service: --broker nats:// at a Redis port, amqp:// with a wrong password, and
// no SHOP_NAME in its environment.
import { readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { exitReason } from '../../../examples/shop/lib/exit-reason.js'

const fixture = (name: string): string =>
  readFileSync(new URL(`./fixtures/stderr-${name}.txt`, import.meta.url), 'utf8')

describe('exitReason', () => {
  it("gives a broker error's message, not the throwing line's location", () => {
    expect(exitReason(fixture('nats-at-redis'))).toBe(
      'BrokerError: nats: cannot connect to nats://127.0.0.1:43391: TIMEOUT',
    )
  })

  it('gives the whole error line of a long message', () => {
    const reason = exitReason(fixture('amqp-refused'))
    expect(reason).toMatch(/^BrokerError: rabbitmq: login refused for user "bad"/)
    expect(reason).toMatch(/check the user name and password in the URL/)
    expect(reason).not.toMatch(/\n|\bat refusedLogin\b/)
  })

  it('gives a plain Error line', () => {
    expect(exitReason(fixture('missing-env'))).toBe('Error: SHOP_NAME is not set')
  })

  it('finds the error line when only the end of stderr was kept', () => {
    const text = fixture('nats-at-redis')
    const kept = text.slice(text.indexOf('BrokerError: nats'))
    expect(exitReason(kept)).toBe(
      'BrokerError: nats: cannot connect to nats://127.0.0.1:43391: TIMEOUT',
    )
  })

  it('falls back to the first line that is not a stack frame, then to a fixed text', () => {
    expect(exitReason('\n\nsomething odd happened\n    at x (file:///a.js:1:1)\n')).toBe(
      'something odd happened',
    )
    expect(exitReason('  \n\n')).toBe('nothing on stderr')
  })
})
