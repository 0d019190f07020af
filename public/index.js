// Landing page: say which mode this daemon advises.
import { probeDaemon, problemText } from './common.js';

const { config, problem } = await probeDaemon(location.origin);
const el = document.getElementById('daemon-mode');
el.textContent = !config
  ? problemText(problem, location.origin)
  : `${config.ENABLE_RABBITMQ ? 'real time (RabbitMQ on)' : 'polling (RabbitMQ off)'}, ` +
    `poll interval ${Math.round(config.pollIntervalMs / 1000)} s, auth ${config.authRequired ? 'required' : 'off'}`;
