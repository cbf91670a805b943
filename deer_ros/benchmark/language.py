"""Instructions for the CALVIN tasks: training paraphrases, one evaluation phrase each, reverse lookup.

Evaluation, like CALVIN, hands the policy a single fixed instruction per task,
while recorded demos get a random paraphrase so a model cannot overfit one
wording. The phrasings of :data:`TASK_LANGUAGE` are our own; CALVIN's own
evaluation wording (:data:`CALVIN_INSTRUCTIONS`, what ``--protocol calvin``
gives the policy) is kept apart, and the reverse lookup knows both. Block tasks
come from templates over the three block colours so every colour gets the same
wording set.
"""
from __future__ import annotations

from dataclasses import dataclass

BLOCK_COLOURS = ('red', 'blue', 'pink')


@dataclass(frozen=True)
class TaskLanguage:
    """The wordings of one task: ``evaluation`` is what the policy sees at test time."""

    evaluation: str
    training: tuple[str, ...]


def _block_tasks() -> dict[str, TaskLanguage]:
    """Per-colour block tasks, built from one template set each."""
    templates: dict[str, tuple[str, tuple[str, ...]]] = {
        'rotate_{c}_block_right': (
            'turn the {c} block clockwise',
            ('rotate the {c} block to the right', 'twist the {c} block clockwise',
             'give the {c} block a quarter turn to the right', 'spin the {c} cube rightwards',
             'grab the {c} block and turn it right')),
        'rotate_{c}_block_left': (
            'turn the {c} block counterclockwise',
            ('rotate the {c} block to the left', 'twist the {c} block anticlockwise',
             'give the {c} block a quarter turn to the left', 'spin the {c} cube leftwards',
             'grab the {c} block and turn it left')),
        'push_{c}_block_right': (
            'slide the {c} block to the right',
            ('push the {c} block rightwards', 'nudge the {c} cube to the right side',
             'shove the {c} block towards the right', 'move the {c} block right by pushing it')),
        'push_{c}_block_left': (
            'slide the {c} block to the left',
            ('push the {c} block leftwards', 'nudge the {c} cube to the left side',
             'shove the {c} block towards the left', 'move the {c} block left by pushing it')),
        'lift_{c}_block_table': (
            'pick the {c} block up from the table',
            ('lift the {c} block off the table', 'grasp the {c} cube on the table and raise it',
             'take the {c} block from the tabletop', 'raise the {c} block lying on the table')),
        'lift_{c}_block_slider': (
            'pick the {c} block up from the cupboard',
            ('lift the {c} block out of the sliding cabinet', 'take the {c} cube from the shelf behind the door',
             'grasp the {c} block in the cabinet and raise it', 'remove the {c} block from the slider shelf')),
        'lift_{c}_block_drawer': (
            'pick the {c} block up from the drawer',
            ('lift the {c} block out of the drawer', 'take the {c} cube from inside the drawer',
             'grasp the {c} block in the drawer and raise it', 'remove the {c} block from the open drawer')),
    }
    return {
        name.format(c=colour): TaskLanguage(evaluation.format(c=colour),
                                            tuple(text.format(c=colour) for text in training))
        for name, (evaluation, training) in templates.items()
        for colour in BLOCK_COLOURS
    }


TASK_LANGUAGE: dict[str, TaskLanguage] = {
    **_block_tasks(),
    'move_slider_left': TaskLanguage('slide the cabinet door to the left', (
        'move the sliding door left', 'push the cupboard door leftwards', 'shift the slider to the left side',
        'drag the sliding panel to the left')),
    'move_slider_right': TaskLanguage('slide the cabinet door to the right', (
        'move the sliding door right', 'push the cupboard door rightwards', 'shift the slider to the right side',
        'drag the sliding panel to the right')),
    'open_drawer': TaskLanguage('pull the drawer open', (
        'open the drawer', 'grab the drawer handle and pull', 'slide the drawer out',
        'draw the drawer towards you')),
    'close_drawer': TaskLanguage('push the drawer shut', (
        'close the drawer', 'slide the drawer back in', 'push the drawer closed',
        'shut the open drawer')),
    'place_in_slider': TaskLanguage('put the block you hold into the cabinet', (
        'place the held block in the sliding cupboard', 'set the block down on the cabinet shelf',
        'drop the cube into the slider compartment', 'store the grasped block behind the sliding door')),
    'place_in_drawer': TaskLanguage('put the block you hold into the drawer', (
        'place the held block in the drawer', 'set the block down inside the drawer',
        'drop the cube into the open drawer', 'store the grasped block in the drawer')),
    'push_into_drawer': TaskLanguage('sweep the block off the table into the drawer', (
        'push the block into the drawer', 'shove the cube from the table into the drawer',
        'slide the block over the edge into the open drawer', 'nudge the block into the drawer')),
    'stack_block': TaskLanguage('put the held block on top of the other block', (
        'stack the blocks', 'place one cube on top of another', 'build a tower of two blocks',
        'set the grasped block onto the other one')),
    'unstack_block': TaskLanguage('take the top block off the stack', (
        'unstack the blocks', 'remove the upper cube from the tower', 'lift the top block off the other one',
        'take the stacked block down')),
    'turn_on_lightbulb': TaskLanguage('flip the switch up to light the bulb', (
        'turn on the light bulb', 'switch the lamp on', 'move the switch so the bulb lights up',
        'make the yellow bulb glow')),
    'turn_off_lightbulb': TaskLanguage('flip the switch down to darken the bulb', (
        'turn off the light bulb', 'switch the lamp off', 'move the switch so the bulb goes dark',
        'make the yellow bulb stop glowing')),
    'turn_on_led': TaskLanguage('press the button to light the green lamp', (
        'turn on the green light', 'push the button to switch the led on', 'light up the led',
        'press the button so the green lamp turns on')),
    'turn_off_led': TaskLanguage('press the button to darken the green lamp', (
        'turn off the green light', 'push the button to switch the led off', 'make the led go dark',
        'press the button so the green lamp turns off')),
}


def _calvin_instructions() -> dict[str, str]:
    """CALVIN's validation annotation of each task (``conf/annotations/new_playtable_validation.yaml``, one per task,
    verbatim): the instruction CALVIN's ``evaluate_policy`` and DeeR-VLA's evaluation give the policy."""
    block_templates = {
        'rotate_{c}_block_right': 'take the {c} block and rotate it to the right',
        'rotate_{c}_block_left': 'take the {c} block and rotate it to the left',
        'push_{c}_block_right': 'go push the {c} block right',
        'push_{c}_block_left': 'go push the {c} block left',
        'lift_{c}_block_table': 'grasp and lift the {c} block',
        'lift_{c}_block_slider': 'lift the {c} block from the sliding cabinet',
        'lift_{c}_block_drawer': 'Take the {c} block from the drawer',
    }
    return {
        **{name.format(c=colour): text.format(c=colour)
           for name, text in block_templates.items() for colour in BLOCK_COLOURS},
        'move_slider_left': 'push the sliding door to the left side',
        'move_slider_right': 'push the sliding door to the right side',
        'open_drawer': 'pull the handle to open the drawer',
        'close_drawer': 'push the handle to close the drawer',
        'place_in_slider': 'store the grasped block in the sliding cabinet',
        'place_in_drawer': 'store the grasped block in the drawer',
        'push_into_drawer': 'slide the block that it falls into the drawer',
        'stack_block': 'stack the grasped block',
        'unstack_block': 'remove the stacked block',
        'turn_on_lightbulb': 'use the switch to turn on the light bulb',
        'turn_off_lightbulb': 'use the switch to turn off the light bulb',
        'turn_on_led': 'press the button to turn on the led light',
        'turn_off_led': 'press the button to turn off the led light',
    }


CALVIN_INSTRUCTIONS: dict[str, str] = _calvin_instructions()


def _normalise(text: str) -> str:
    return ' '.join(text.lower().split())


def _build_lookup() -> dict[str, str]:
    lookup: dict[str, str] = {}
    for task, language in TASK_LANGUAGE.items():
        for text in (language.evaluation, *language.training, CALVIN_INSTRUCTIONS[task]):
            key = _normalise(text)
            if lookup.setdefault(key, task) != task:
                raise ValueError(f'instruction {text!r} is used by both {lookup[key]} and {task}')
    return lookup


_INSTRUCTION_TO_TASK = _build_lookup()


def evaluation_instruction(task: str) -> str:
    """The single instruction evaluation gives the policy for ``task``."""
    return _language(task).evaluation


def calvin_instruction(task: str) -> str:
    """The instruction CALVIN's own evaluation gives the policy for ``task``."""
    _language(task)  # the same error for an unknown task
    return CALVIN_INSTRUCTIONS[task]


def training_instructions(task: str) -> tuple[str, ...]:
    """Paraphrases used to annotate recorded demos of ``task``."""
    return _language(task).training


def task_for_instruction(instruction: str) -> str:
    """The task an instruction (evaluation, training or CALVIN's wording; case and spacing ignored) refers to."""
    try:
        return _INSTRUCTION_TO_TASK[_normalise(instruction)]
    except KeyError:
        raise KeyError(f'unknown instruction {instruction!r}: not one of the phrasings in deer_ros.benchmark.language') from None


def _language(task: str) -> TaskLanguage:
    try:
        return TASK_LANGUAGE[task]
    except KeyError:
        raise KeyError(f'no instructions for task {task!r}; known tasks: {sorted(TASK_LANGUAGE)}') from None
