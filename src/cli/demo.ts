// `breakwater demo`: for now the policy scenarios are the whole demo, so `demo` and
// `demo policies` play the same thing. When the shop system lands it becomes the default and
// the scenarios stay reachable as `demo policies`.
import {
  type PolicyScenarioName,
  policyScenarioNames,
  runPoliciesDemo,
} from '../demo/policies/index.js'

const usage = `usage: breakwater demo [policies] [--only <scenario>[,<scenario>...]]

Plays the resilience-policy scenarios against local HTTP services that fail on purpose
(5xx bursts, connection resets, hangs, one slow dependency, an outage and its recovery),
each without and with its policy, and prints what the numbers show.

  policies           the policy scenarios (the default for now)
  --only <names>     play only these scenarios: ${policyScenarioNames.join(', ')}
  -h, --help         show this help
`

type Parsed = { readonly help: true } | { readonly only: readonly PolicyScenarioName[] }

function isScenarioName(name: string): name is PolicyScenarioName {
  return (policyScenarioNames as readonly string[]).includes(name)
}

// Returns the parsed arguments, or the message that explains what is wrong with them.
function parse(args: readonly string[]): Parsed | string {
  let only: PolicyScenarioName[] = [...policyScenarioNames]
  let sawSubcommand = false
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!
    if (arg === '--help' || arg === '-h') return { help: true }
    if (arg === 'policies' && !sawSubcommand && i === 0) {
      sawSubcommand = true
    } else if (arg === '--only' || arg.startsWith('--only=')) {
      const value = arg === '--only' ? args[++i] : arg.slice('--only='.length)
      if (value === undefined || value === '') return '--only needs a list of scenarios'
      const names = value.split(',').map((name) => name.trim())
      const unknown = names.filter((name) => !isScenarioName(name))
      if (unknown.length > 0)
        return `unknown scenario "${unknown[0]}" (known: ${policyScenarioNames.join(', ')})`
      only = names.filter(isScenarioName)
    } else if (arg.startsWith('-')) {
      return `unknown option "${arg}"`
    } else {
      return `unknown demo "${arg}" (known: policies)`
    }
  }
  return { only }
}

/**
 * `breakwater demo [policies] [--only <scenarios>]`: plays the policy scenarios and prints
 * their report on stdout. Resolves to 0 when the run completes (whatever the numbers show:
 * the report says that), 2 for bad arguments.
 */
export async function demoCommand(args: string[]): Promise<number> {
  const parsed = parse(args)
  if (typeof parsed === 'string') {
    process.stderr.write(`breakwater demo: ${parsed}\n\n${usage}`)
    return 2
  }
  if ('help' in parsed) {
    process.stdout.write(usage)
    return 0
  }
  await runPoliciesDemo({
    only: parsed.only,
    write: (line) => process.stdout.write(`${line}\n`),
  })
  return 0
}
