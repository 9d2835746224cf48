import { describeBrokerConformance } from './conformance.js'

describeBrokerConformance({ name: 'rabbitmq', dedupe: false })
