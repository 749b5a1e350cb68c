//! given/when/then for decider tests: `given(events).when(command).then(events)`.

use std::fmt::Debug;

pub struct Given<S, E> {
    state: S,
    _events: std::marker::PhantomData<E>,
}

pub fn given<S, E>(events: impl IntoIterator<Item = E>, evolve: fn(S, &E) -> S) -> Given<S, E>
where
    S: Default,
{
    let state = events.into_iter().fold(S::default(), |s, e| evolve(s, &e));
    Given {
        state,
        _events: std::marker::PhantomData,
    }
}

pub struct When<E, Err> {
    outcome: Result<Vec<E>, Err>,
}

impl<S, E> Given<S, E> {
    pub fn when<C, Err>(
        self,
        command: C,
        decide: fn(&C, &S) -> Result<Vec<E>, Err>,
    ) -> When<E, Err> {
        When {
            outcome: decide(&command, &self.state),
        }
    }
}

impl<E: Debug + PartialEq, Err: Debug + PartialEq> When<E, Err> {
    pub fn then(self, expected: impl IntoIterator<Item = E>) {
        let expected: Vec<E> = expected.into_iter().collect();
        assert_eq!(self.outcome, Ok(expected));
    }

    pub fn then_err(self, expected: Err) {
        assert_eq!(self.outcome, Err(expected));
    }
}
